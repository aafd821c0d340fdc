package httpapi

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/kvd-project/kvd"
)

// streamIdle bounds how long a backup's download or a restore's upload
// may stall: each read or write pushes the connection's deadline this far
// ahead, so a large transfer lasts as long as it moves.
const streamIdle = time.Minute

// backup serves GET /v1/admin/backup: the backup streamed as it is read
// from the groups.
func (h *Handler) backup(w http.ResponseWriter, r *http.Request) {
	if len(r.URL.Query()) > 0 {
		writeError(w, fmt.Errorf("%w: GET /v1/admin/backup takes no parameter", kvd.ErrInvalid), false)
		return
	}
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // the cut may take a while: see deadlineWriter
	started := false
	sw := &deadlineWriter{w: w, rc: rc}
	_, err := h.b.Backup(r.Context(), func() io.Writer {
		started = true
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Disposition", `attachment; filename="kvd-`+time.Now().UTC().Format("20060102T150405Z")+`.kvdb"`)
		w.WriteHeader(http.StatusOK)
		return sw
	})
	switch {
	case err == nil:
	case !started:
		writeError(w, err, false)
	default:
		// Cut the connection: the stream lacks its end chunk, so that
		// no reader takes it for whole.
		h.log.Warn("backup stream failed", "err", err)
		panic(http.ErrAbortHandler)
	}
}

// restore serves POST /v1/admin/restore[?force=true]: the body is the
// backup, read as it arrives.
func (h *Handler) restore(w http.ResponseWriter, r *http.Request) {
	force := false
	for name, vs := range r.URL.Query() {
		var err error
		switch {
		case name != "force":
			err = fmt.Errorf("%w: unknown parameter %q (POST /v1/admin/restore takes force)", kvd.ErrInvalid, name)
		case len(vs) != 1:
			err = fmt.Errorf("%w: force given %d times", kvd.ErrInvalid, len(vs))
		default:
			if force, err = strconv.ParseBool(vs[0]); err != nil {
				err = fmt.Errorf("%w: force must be true or false, not %q", kvd.ErrInvalid, vs[0])
			}
		}
		if err != nil {
			writeError(w, err, false)
			return
		}
	}
	rc := http.NewResponseController(w)
	// The answer comes when the restore is loaded, past the server's
	// write timeout for a large one.
	_ = rc.SetWriteDeadline(time.Time{})
	body := &deadlineReader{r: r.Body, rc: rc}
	out, err := h.b.Restore(r.Context(), body, force)
	_ = rc.SetWriteDeadline(time.Now().Add(streamIdle))
	if err != nil {
		writeError(w, err, true)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// backupPart serves GET /v1/internal/backuppart?group=&id=&min_index=, a
// group's part of a backup (node to node).
func (h *Handler) backupPart(w http.ResponseWriter, r *http.Request) {
	g, minIndex, err := groupAndIndex(r, "min_index")
	if err != nil {
		writeError(w, err, false)
		return
	}
	id := r.URL.Query().Get("id")
	if id == "" || len(id) > 64 {
		writeError(w, fmt.Errorf("%w: a backup id is 1 to 64 characters", kvd.ErrInvalid), false)
		return
	}
	// No write deadline: the driver reads the groups' parts one after
	// another, so a part may wait long for its turn; the driver closes
	// the connection when it is done or gives up.
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{})
	started := false
	err = h.b.WriteBackupPart(r.Context(), g, id, minIndex, func() io.Writer {
		started = true
		w.Header().Set("Content-Type", "application/octet-stream")
		w.WriteHeader(http.StatusOK)
		return w
	}, func() { _ = rc.Flush() })
	switch {
	case err == nil:
	case !started:
		writeError(w, err, false)
	default:
		h.log.Warn("backup part stream failed", "group", g, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// deadlineWriter pushes the connection's write deadline ahead of every
// write.
type deadlineWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	_ = d.rc.SetWriteDeadline(time.Now().Add(streamIdle))
	return d.w.Write(p)
}

// deadlineReader pushes the connection's read deadline ahead of every
// read.
type deadlineReader struct {
	r  io.Reader
	rc *http.ResponseController
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	_ = d.rc.SetReadDeadline(time.Now().Add(streamIdle))
	return d.r.Read(p)
}
