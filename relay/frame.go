package relay

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// frame is one GetFlowsResponse of a peer as it came on the wire: the
// relay passes it on without decoding the flow, and reads only its time.
type frame struct {
	b  []byte
	at int64 // ns since the epoch
}

// Field numbers of GetFlowsResponse, Flow and Timestamp the relay reads.
const (
	fieldRespFlow     = 1
	fieldRespNodeName = 1000
	fieldRespTime     = 1001
	fieldFlowTime     = 1
	fieldTSSeconds    = 1
	fieldTSNanos      = 2
)

var errFrame = errors.New("malformed GetFlowsResponse")

// frameInfo is what the relay reads of an encoded GetFlowsResponse.
type frameInfo struct {
	at          int64 // its time (else its flow's), ns since the epoch
	hasTime     bool
	hasNodeName bool
}

// readFrame reads the time and the presence of a node name of an encoded
// GetFlowsResponse, checking the structure of its top-level fields only. A
// field that repeats merges as protobuf merges it: the encodings of a
// message field concatenate, the last scalar wins, and another member of
// the oneof drops the flow.
func readFrame(b []byte) (frameInfo, error) {
	var fi frameInfo
	var flow, ts []byte
	var hasTS bool
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte) {
		if typ != protowire.BytesType {
			return
		}
		switch num {
		case fieldRespTime:
			ts, hasTS = append(ts, v...), true
		case fieldRespNodeName:
			fi.hasNodeName = len(v) > 0
		case fieldRespFlow:
			flow = append(flow, v...)
		case fieldRespFlow + 1, fieldRespFlow + 2: // node_status, lost_events
			flow = nil
		}
	})
	if err != nil {
		return fi, err
	}
	if !hasTS && flow != nil {
		err := eachField(flow, func(num protowire.Number, typ protowire.Type, v []byte) {
			if num == fieldFlowTime && typ == protowire.BytesType {
				ts, hasTS = append(ts, v...), true
			}
		})
		if err != nil {
			return fi, fmt.Errorf("reading the flow: %w", err)
		}
	}
	if hasTS {
		at, err := readTimestamp(ts)
		if err != nil {
			return fi, err
		}
		fi.at, fi.hasTime = at, true
	}
	return fi, nil
}

// eachField calls f with every field of an encoded message: its number,
// wire type and value (for a bytes field, its content).
func eachField(b []byte, f func(protowire.Number, protowire.Type, []byte)) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("reading a field tag: %w", errFrame)
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return fmt.Errorf("reading field %d: %w", num, errFrame)
		}
		v := b[:m]
		if typ == protowire.BytesType {
			v, _ = protowire.ConsumeBytes(v)
		}
		f(num, typ, v)
		b = b[m:]
	}
	return nil
}

// readTimestamp reads an encoded google.protobuf.Timestamp as ns since the
// epoch (saturated at the ends of int64).
func readTimestamp(b []byte) (int64, error) {
	var sec, nsec int64
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte) {
		if typ != protowire.VarintType {
			return
		}
		x, _ := protowire.ConsumeVarint(v)
		switch num {
		case fieldTSSeconds:
			sec = int64(x)
		case fieldTSNanos:
			nsec = int64(int32(x))
		}
	})
	if err != nil {
		return 0, fmt.Errorf("reading a timestamp: %w", err)
	}
	const maxSec = int64(1<<63-1) / 1_000_000_000
	switch {
	case sec > maxSec:
		return 1<<63 - 1, nil
	case sec < -maxSec:
		return -1 << 63, nil
	}
	return sec*1e9 + nsec, nil
}

// withNodeName returns b with node_name set to name.
func withNodeName(b []byte, name string) []byte {
	b = protowire.AppendTag(b, fieldRespNodeName, protowire.BytesType)
	return protowire.AppendString(b, name)
}

// codec is gRPC's proto codec, but a *frame is sent and received as it is:
// the relay reads peers' responses into frames and sends them on without
// decoding and encoding every flow again.
type codec struct{}

var protoCodec = encoding.GetCodecV2(grpcproto.Name)

func (codec) Name() string { return grpcproto.Name }

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*frame); ok {
		return mem.BufferSlice{mem.SliceBuffer(f.b)}, nil
	}
	return protoCodec.Marshal(v)
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	if f, ok := v.(*frame); ok {
		f.b = data.Materialize()
		return nil
	}
	return protoCodec.Unmarshal(data, v)
}
