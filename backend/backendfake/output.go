package backendfake

import (
	"io"

	"github.com/vmcp-dev/vmcp/internal/capture"
	"github.com/vmcp-dev/vmcp/internal/linesplit"
)

// output collects the two streams of a call as the real backends do: to
// the caller's writer when there is one, else kept in the result up to max
// bytes; and line by line to OnOutput as they are written.
type output struct {
	on    func(stream, line string)
	w     [2]io.Writer
	kept  [2]capture.Capped
	lines [2]linesplit.Splitter
	err   error // of a writer: the first one
}

var streamNames = [2]string{"stdout", "stderr"}

func newOutput(on func(stream, line string), stdout, stderr io.Writer, max int) *output {
	if max <= 0 {
		max = capture.DefaultMax
	}
	o := &output{on: on, w: [2]io.Writer{stdout, stderr}}
	o.kept[0].Max, o.kept[1].Max = max, max
	return o
}

func (o *output) write(i int, p []byte) {
	if w := o.w[i]; w != nil {
		if o.err == nil {
			_, o.err = w.Write(p)
		}
	} else {
		o.kept[i].Write(p)
	}
	if o.on != nil {
		o.lines[i].Split(p, func(line []byte) { o.on(streamNames[i], string(line)) })
	}
}

// flush hands OnOutput the last lines that had no newline.
func (o *output) flush() {
	for i := range o.lines {
		if o.on != nil {
			o.lines[i].Flush(func(line []byte) { o.on(streamNames[i], string(line)) })
		}
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
