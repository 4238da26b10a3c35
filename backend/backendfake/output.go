package backendfake

import (
	"bytes"
	"io"
	"strings"
)

// defaultMaxOutput is how much of each stream a result keeps, as on the
// real backends.
const defaultMaxOutput = 1 << 20

// output collects the two streams of a call as the real backends do: to
// the caller's writer when there is one, else kept in the result up to max
// bytes; and line by line to OnOutput as they are written.
type output struct {
	on        func(stream, line string)
	w         [2]io.Writer
	buf       [2]strings.Builder
	max       int
	truncated [2]bool
	partial   [2][]byte
	err       error // of a writer: the first one
}

var streamNames = [2]string{"stdout", "stderr"}

func newOutput(on func(stream, line string), stdout, stderr io.Writer, max int) *output {
	if max <= 0 {
		max = defaultMaxOutput
	}
	return &output{on: on, w: [2]io.Writer{stdout, stderr}, max: max}
}

func (o *output) write(i int, p []byte) {
	if w := o.w[i]; w != nil {
		if o.err == nil {
			_, o.err = w.Write(p)
		}
	} else if room := o.max - o.buf[i].Len(); room < len(p) {
		o.buf[i].Write(p[:max(room, 0)])
		o.truncated[i] = true
	} else {
		o.buf[i].Write(p)
	}
	if o.on == nil {
		return
	}
	o.partial[i] = append(o.partial[i], p...)
	for {
		j := bytes.IndexByte(o.partial[i], '\n')
		if j < 0 {
			break
		}
		o.on(streamNames[i], string(o.partial[i][:j]))
		o.partial[i] = o.partial[i][j+1:]
	}
}

// flush hands OnOutput the last lines that had no newline.
func (o *output) flush() {
	for i := range o.partial {
		if o.on != nil && len(o.partial[i]) > 0 {
			o.on(streamNames[i], string(o.partial[i]))
		}
		o.partial[i] = nil
	}
}

// streamWriter is one stream of an output as an io.Writer.
type streamWriter struct {
	o *output
	i int
}

func (w streamWriter) Write(p []byte) (int, error) {
	w.o.write(w.i, p)
	return len(p), nil
}
