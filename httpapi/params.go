package httpapi

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

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
	rt := kvd.Route{Direct: true, Group: kvd.GroupID(g), Epoch: e}
	if v := r.Header.Get(api.HeaderSlots); v != "" {
		ss, err := kvd.ParseSlotSet(v)
		if err != nil {
			return kvd.Route{}, fmt.Errorf("%s: %w", api.HeaderSlots, err)
		}
		rt.Slots = &ss
	}
	return rt, nil
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

// keyRequest is what a request on one key says.
type keyRequest struct {
	key string
	rt  kvd.Route
	// c is a read's consistency; notModified the version its
	// If-None-Match names (0: none).
	c           kvd.Consistency
	notModified uint64
	// wr are a write's options; value a put's value.
	wr    kvd.WriteOptions
	value []byte
}

// readGet reads a GET of a key: its key, routing, consistency and
// If-None-Match.
func (h *Handler) readGet(r *http.Request) (req keyRequest, err error) {
	if req.key, err = h.keyOf(r); err != nil {
		return req, err
	}
	if req.c, req.rt, err = readRouting(r); err != nil {
		return req, err
	}
	if inm := r.Header.Get("If-None-Match"); inm != "" && strings.TrimSpace(inm) != "*" {
		req.notModified, err = parseETag(inm)
	}
	return req, err
}

// readWrite reads a write of a key: its key, routing, condition (If-Match,
// If-None-Match) and idempotency key.
func (h *Handler) readWrite(r *http.Request) (req keyRequest, err error) {
	if req.key, err = h.keyOf(r); err != nil {
		return req, err
	}
	if req.rt, err = routeOf(r); err != nil {
		return req, err
	}
	cond, err := condOf(r)
	req.wr = kvd.WriteOptions{Cond: cond, IdempotencyKey: r.Header.Get("Idempotency-Key"), IdempotencyScope: idemScope(r)}
	return req, err
}

// readPut reads a PUT: a write's options, its ttl and its value.
func (h *Handler) readPut(w http.ResponseWriter, r *http.Request) (keyRequest, error) {
	req, err := h.readWrite(r)
	if err != nil {
		return req, err
	}
	if s := r.URL.Query().Get("ttl"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 || kvd.ValidateTTL(d) != nil {
			return req, fmt.Errorf("%w: ttl must be a positive Go duration such as 30s, at most %v, not %q", kvd.ErrInvalid, kvd.MaxTTL, s)
		}
		req.wr.TTL = d
	}
	// One byte past the value limit tells a value that is too large from
	// one that fits; the error names the value limit itself.
	lim := h.o.Limits
	if req.value, err = h.readBody(w, r, min(lim.MaxBodyBytes, int64(lim.MaxValueBytes)+1)); err != nil {
		if errors.Is(err, kvd.ErrTooLarge) && int64(lim.MaxValueBytes) < lim.MaxBodyBytes {
			err = fmt.Errorf("%w: the value exceeds %d bytes", kvd.ErrTooLarge, lim.MaxValueBytes)
		}
		return req, err
	}
	return req, lim.ValidateValue(len(req.value))
}

// readRouting reads a read's consistency and routing.
func readRouting(r *http.Request) (kvd.Consistency, kvd.Route, error) {
	c, err := consistencyOf(r)
	if err != nil {
		return "", kvd.Route{}, err
	}
	rt, err := routeOf(r)
	return c, rt, err
}

// scanOptionsOf reads a scan's range, page limit and byte cap.
func (h *Handler) scanOptionsOf(r *http.Request) (kvd.ScanOptions, error) {
	q := r.URL.Query()
	o := kvd.ScanOptions{Prefix: q.Get("prefix"), Start: q.Get("start"), End: q.Get("end"), Limit: h.o.Limits.DefaultScanLimit}
	for name, v := range map[string]string{"prefix": o.Prefix, "start": o.Start, "end": o.End} {
		if !utf8.ValidString(v) {
			return o, fmt.Errorf("%w: %s is not valid UTF-8", kvd.ErrInvalid, name)
		}
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		switch {
		case err != nil || n < 1:
			return o, fmt.Errorf("%w: limit must be a positive integer, not %q", kvd.ErrInvalid, s)
		case n > h.o.Limits.MaxScanLimit:
			return o, fmt.Errorf("%w: limit %d is over the maximum page of %d", kvd.ErrInvalid, n, h.o.Limits.MaxScanLimit)
		}
		o.Limit = n
	}
	if s := q.Get("bytes"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return o, fmt.Errorf("%w: bytes must be a positive integer, not %q", kvd.ErrInvalid, s)
		}
		o.MaxBytes = n // lowers the node's cap, never raises it
	}
	return o, nil
}
