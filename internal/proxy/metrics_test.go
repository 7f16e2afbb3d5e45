package proxy

import (
	"encoding/binary"
	"testing"
)

// gRPC messages are counted however the stream is cut into reads: one byte
// at a time, or everything at once.
func TestGRPCMessageCountingAcrossSplits(t *testing.T) {
	var stream []byte
	for _, size := range []int{0, 1, 5, 70000, 3} {
		stream = append(stream, 0)
		stream = binary.BigEndian.AppendUint32(stream, uint32(size))
		stream = append(stream, make([]byte, size)...)
	}
	for _, chunk := range []int{1, 4, 5, 7, 4096, len(stream)} {
		g := &grpcMessages{}
		for b := stream; len(b) > 0; {
			k := min(chunk, len(b))
			g.feed(b[:k])
			b = b[k:]
		}
		if g.count() != 5 {
			t.Errorf("reads of %d bytes: counted %d messages, want 5", chunk, g.count())
		}
	}
}
