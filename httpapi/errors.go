package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"unicode/utf8"

	"github.com/kvd-project/kvd"
	"github.com/kvd-project/kvd/api"
)

// statusOf maps an error to its HTTP status and error code (api.Codes).
// write tells whether the request could have changed state: a bare
// timeout on a write has an unknown outcome, on a read it only means
// unavailable.
func statusOf(err error, write bool) (int, string) {
	c := api.CodeOf(err, write)
	return c.Status, c.Code
}

// writeError answers with the JSON error body of the contract.
func writeError(w http.ResponseWriter, err error, write bool) {
	status, code := statusOf(err, write)
	detail := api.ErrorDetail{Code: code, Message: clip(err.Error())}
	var nl *kvd.NotLeaderError
	if errors.As(err, &nl) {
		detail.Leader = nl.Leader
		detail.Group = uint64(nl.Group)
		w.Header().Set(api.HeaderLeader, nl.Leader)
	}
	if status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, status, api.Error{Error: detail})
}

// maxMessage bounds an error message: some quote what the client sent (a
// number too long to parse, say), which must not echo megabytes back.
const maxMessage = 2 << 10

// clip shortens msg to maxMessage bytes, on a rune boundary, marking the
// cut.
func clip(msg string) string {
	if len(msg) <= maxMessage {
		return msg
	}
	cut := maxMessage
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… (%d more bytes)", msg[:cut], len(msg)-cut)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	buf := bufPool.Get().(*bytes.Buffer)
	defer putBuf(buf)
	if err := json.NewEncoder(buf).Encode(v); err != nil { // Encode ends with a newline
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":{"code":"internal","message":"encode response"}}` + "\n")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// writeVersion writes {"version":N}, the answer to every PUT, without
// reflection; the bytes are those writeJSON would write.
func writeVersion(w http.ResponseWriter, v uint64) {
	var b [32]byte
	out := append(b[:0], `{"version":`...)
	out = strconv.AppendUint(out, v, 10)
	out = append(out, "}\n"...)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(out)
}

// bufPool holds response buffers; big ones are not kept.
var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func putBuf(b *bytes.Buffer) {
	if b.Cap() > 64<<10 {
		return
	}
	b.Reset()
	bufPool.Put(b)
}
