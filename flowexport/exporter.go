package flowexport

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"github.com/cilium/lumberjack/v2"
	"google.golang.org/protobuf/encoding/protojson"
)

// exporter writes one flow log.
type exporter struct {
	spec   *spec
	file   *lumberjack.Logger
	counts counts
	// lastErr is the last failure to write, or to create the file.
	lastErr string
}

// counts are an exporter's, kept across reopening.
type counts struct {
	flows       uint64
	lost        uint64
	writeErrors uint64
}

// jsonOpts are Hubble's: proto field names.
var jsonOpts = protojson.MarshalOptions{UseProtoNames: true}

// openExporter prepares s's file, creating it (and its directory) so that
// a reader can follow it at once; a failure is reported in its status, and
// each write tries again.
func openExporter(s *spec, c counts) *exporter {
	e := &exporter{spec: s, counts: c, file: &lumberjack.Logger{
		Filename:   s.path,
		MaxSize:    s.maxSizeMB,
		MaxBackups: s.maxBackups,
		Compress:   s.compress,
	}}
	if err := createFile(s.path); err != nil {
		e.lastErr = err.Error()
	}
	return e
}

func createFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("creating the directory of flow log %q: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("creating flow log %q: %w", path, err)
	}
	return f.Close()
}

// active reports whether the exporter's end, if any, is still ahead.
func (e *exporter) active(now time.Time) bool {
	return e.spec.end.IsZero() || now.Before(e.spec.end)
}

// writeLine writes one line; it reports whether it was written.
func (e *exporter) writeLine(line []byte) bool {
	if _, err := e.file.Write(line); err != nil {
		e.counts.writeErrors++
		e.lastErr = fmt.Sprintf("writing flow log %q: %v", e.spec.path, err)
		return false
	}
	return true
}

func (e *exporter) close() error {
	if err := e.file.Close(); err != nil {
		return fmt.Errorf("closing flow log %q: %w", e.spec.path, err)
	}
	return nil
}

// flowLine is a flow's export line with e's field mask applied.
func flowLine(e *exporter, resp *observerpb.GetFlowsResponse, f *flowpb.Flow, nodeName string) ([]byte, error) {
	out := &observerpb.GetFlowsResponse{
		ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: e.spec.mask.Apply(f)},
		NodeName:      firstNonEmpty(resp.GetNodeName(), f.GetNodeName(), nodeName),
		Time:          resp.GetTime(),
	}
	if out.Time == nil {
		out.Time = f.GetTime()
	}
	return marshalLine(out)
}

func marshalLine(resp *observerpb.GetFlowsResponse) ([]byte, error) {
	b, err := jsonOpts.Marshal(resp)
	if err != nil {
		return nil, fmt.Errorf("encoding an export line: %w", err)
	}
	return append(b, '\n'), nil
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}
