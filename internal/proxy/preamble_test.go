package proxy

import (
	"bytes"
	"strings"
	"testing"
)

// The TCP tunnel preamble is hand-written framing read from the network:
// any input is either refused or read back exactly, never a panic or an
// allocation beyond the limit.
func FuzzReadPreamble(f *testing.F) {
	var buf bytes.Buffer
	_ = writePreamble(&buf, encodePeer(selfPeer(nil), "a.b.svc.cluster.local", "a", "b"))
	f.Add(buf.Bytes())
	f.Add([]byte{0xff, 0xff, 'x'})
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, data []byte) {
		meta, err := readPreamble(bytes.NewReader(data))
		if err != nil {
			return
		}
		if len(meta) > maxPreamble {
			t.Fatalf("read %d bytes of preamble, limit %d", len(meta), maxPreamble)
		}
		var out bytes.Buffer
		if err := writePreamble(&out, meta); err != nil || !bytes.HasPrefix(data, out.Bytes()) {
			t.Fatalf("preamble %q does not round-trip", meta)
		}
	})
}

func TestPreambleLimit(t *testing.T) {
	var buf bytes.Buffer
	if err := writePreamble(&buf, strings.Repeat("x", maxPreamble+1)); err != nil {
		t.Fatal(err)
	}
	if meta, err := readPreamble(&buf); err != nil || meta != "" {
		t.Errorf("oversize metadata read back as %d bytes, %v; want it dropped", len(meta), err)
	}
	if _, err := readPreamble(bytes.NewReader([]byte{0x20, 0x00})); err == nil {
		t.Error("a preamble claiming 8 KiB was accepted")
	}
}
