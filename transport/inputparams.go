package transport

import (
	"bytes"
	"net/http"
	"strings"
)

// withInputParams makes the input requests in next's responses carry an
// explicit params object, as the stdio transport does (see
// withInputRequestParams): in JSON bodies, and in the data lines of event
// streams (streamable HTTP's streamed responses, the legacy SSE stream).
func withInputParams(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pw := &inputParamsWriter{ResponseWriter: w}
		next.ServeHTTP(pw, r)
		pw.finish()
	})
}

// How an inputParamsWriter treats a response, by its Content-Type.
const (
	undecided = iota
	passThrough
	wholeJSON   // buffered, patched and written when the handler returns
	eventStream // written a line at a time, data lines patched
)

type inputParamsWriter struct {
	http.ResponseWriter
	mode   int
	status int    // of a wholeJSON response, written with its body
	buf    []byte // the wholeJSON body, or an event stream's unfinished line
}

func (w *inputParamsWriter) decide() {
	if w.mode != undecided {
		return
	}
	switch ct := w.Header().Get("Content-Type"); {
	case strings.HasPrefix(ct, "application/json"):
		w.mode = wholeJSON
		w.Header().Del("Content-Length") // the patch may change it
	case strings.HasPrefix(ct, "text/event-stream"):
		w.mode = eventStream
	default:
		w.mode = passThrough
	}
}

func (w *inputParamsWriter) WriteHeader(code int) {
	w.decide()
	if w.mode == wholeJSON {
		w.status = code
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *inputParamsWriter) Write(p []byte) (int, error) {
	w.decide()
	switch w.mode {
	case wholeJSON:
		w.buf = append(w.buf, p...)
		return len(p), nil
	case eventStream:
		w.buf = append(w.buf, p...)
		end := bytes.LastIndexByte(w.buf, '\n') + 1
		if end == 0 {
			return len(p), nil
		}
		lines := patchDataLines(w.buf[:end])
		w.buf = append([]byte(nil), w.buf[end:]...)
		if _, err := w.ResponseWriter.Write(lines); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return w.ResponseWriter.Write(p)
}

// Flush sends what has been written, except a JSON body, which goes out
// whole, and an event stream's unfinished line, which no client could use.
func (w *inputParamsWriter) Flush() {
	if w.mode == wholeJSON {
		return
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *inputParamsWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *inputParamsWriter) finish() {
	switch w.mode {
	case wholeJSON:
		body := w.buf
		if bytes.Contains(body, []byte(`"inputRequests"`)) {
			body = withInputRequestParams(bytes.TrimSpace(body))
		}
		if w.status != 0 {
			w.ResponseWriter.WriteHeader(w.status)
		}
		w.ResponseWriter.Write(body)
	case eventStream:
		if len(w.buf) > 0 {
			w.ResponseWriter.Write(w.buf)
		}
	}
}

// patchDataLines patches the JSON of the data lines in complete lines of an
// event stream.
func patchDataLines(lines []byte) []byte {
	if !bytes.Contains(lines, []byte(`"inputRequests"`)) {
		return lines
	}
	var out []byte
	for _, line := range bytes.SplitAfter(lines, []byte("\n")) {
		if data, ok := bytes.CutPrefix(line, []byte("data:")); ok && bytes.Contains(data, []byte(`"inputRequests"`)) {
			patched := withInputRequestParams(bytes.TrimSpace(data))
			line = append(append([]byte("data: "), patched...), '\n')
		}
		out = append(out, line...)
	}
	return out
}
