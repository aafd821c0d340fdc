package httpapi

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/gorilla/mux"
	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// keyOf returns the request's key, percent-decoded once and validated.
func (h *Handler) keyOf(r *http.Request) (string, error) {
	raw := mux.Vars(r)["key"]
	key, err := url.PathUnescape(raw)
	if err != nil {
		return "", fmt.Errorf("%w: bad percent-encoding in key: %v", kvd.ErrInvalid, err)
	}
	if err := h.o.Limits.ValidateKey(key); err != nil {
		return "", err
	}
	return key, nil
}

// routeOf parses the routing headers a smart client sends.
func routeOf(r *http.Request) (kvd.Route, error) {
	gs, es := r.Header.Get(api.HeaderGroup), r.Header.Get(api.HeaderEpoch)
	if gs == "" && es == "" {
		return kvd.Route{}, nil
	}
	g, err1 := strconv.ParseUint(gs, 10, 64)
	e, err2 := strconv.ParseUint(es, 10, 64)
	if err1 != nil || err2 != nil || g == 0 {
		return kvd.Route{}, fmt.Errorf("%w: %s and %s must both be positive integers", kvd.ErrInvalid, api.HeaderGroup, api.HeaderEpoch)
	}
	return kvd.Route{Direct: true, Group: kvd.GroupID(g), Epoch: e}, nil
}

func consistencyOf(r *http.Request) (kvd.Consistency, error) {
	return kvd.ParseConsistency(r.URL.Query().Get("consistency"))
}

// parseETag parses one entity tag: "5" (or 5, or W/"5").
func parseETag(s string) (uint64, error) {
	s = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(s), "W/"))
	s = strings.TrimSuffix(strings.TrimPrefix(s, `"`), `"`)
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: entity tag %q is not a version", kvd.ErrInvalid, s)
	}
	return v, nil
}

func etag(v kvd.Version) string { return `"` + strconv.FormatUint(v, 10) + `"` }

// condOf turns If-Match / If-None-Match into a precondition.
func condOf(r *http.Request) (kvd.Cond, error) {
	im, inm := r.Header.Get("If-Match"), r.Header.Get("If-None-Match")
	switch {
	case im != "" && inm != "":
		return kvd.Cond{}, fmt.Errorf("%w: use If-Match or If-None-Match, not both", kvd.ErrInvalid)
	case strings.TrimSpace(im) == "*":
		return kvd.Cond{Kind: kvd.CondExists}, nil
	case im != "":
		v, err := parseETag(im)
		return kvd.Cond{Kind: kvd.CondVersionEq, Version: v}, err
	case strings.TrimSpace(inm) == "*":
		return kvd.Cond{Kind: kvd.CondVersionEq, Version: 0}, nil
	case inm != "":
		v, err := parseETag(inm)
		return kvd.Cond{Kind: kvd.CondVersionNe, Version: v}, err
	}
	return kvd.Cond{}, nil
}

// readBody reads a request body within the limits.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, fmt.Errorf("%w: body is %d bytes, the limit is %d", kvd.ErrTooLarge, r.ContentLength, limit)
	}
	rd := http.MaxBytesReader(w, r.Body, limit)
	var body []byte
	var err error
	if n := r.ContentLength; n >= 0 {
		// The size is announced: one allocation of it (and one byte to
		// see a body longer than announced), not a growing buffer.
		body = make([]byte, n+1)
		var got int
		got, err = io.ReadFull(rd, body)
		switch {
		case int64(got) == n && (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)):
			body, err = body[:got], nil
		case err == nil:
			err = fmt.Errorf("body longer than its Content-Length %d", n)
		case int64(got) < n && err != nil:
			err = fmt.Errorf("body shorter (%d bytes) than its Content-Length %d: %w", got, n, err)
		}
	} else {
		body, err = io.ReadAll(rd)
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, fmt.Errorf("%w: body exceeds %d bytes", kvd.ErrTooLarge, limit)
		}
		if errors.Is(err, kvd.ErrOverloaded) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: read body: %v", kvd.ErrInvalid, err)
	}
	return body, nil
}

// keyRoute reads a key request's key and routing.
func (h *Handler) keyRoute(r *http.Request) (string, kvd.Route, error) {
	key, err := h.keyOf(r)
	if err != nil {
		return "", kvd.Route{}, err
	}
	rt, err := routeOf(r)
	return key, rt, err
}

// writeOptionsOf reads a write's condition (If-Match, If-None-Match) and
// idempotency key.
func writeOptionsOf(r *http.Request) (kvd.WriteOptions, error) {
	cond, err := condOf(r)
	if err != nil {
		return kvd.WriteOptions{}, err
	}
	return kvd.WriteOptions{Cond: cond, IdempotencyKey: r.Header.Get("Idempotency-Key")}, nil
}
