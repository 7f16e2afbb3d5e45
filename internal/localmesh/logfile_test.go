package localmesh

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A container that writes without end (or a client that makes it log a
// line per refused request) keeps at most two files of the cap.
func TestLogIsRotatedBySize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.log")
	l, err := openRotatingLog(path, 1000)
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Repeat("x", 99) + "\n"
	for range 100 {
		if _, err := l.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Write([]byte(strings.Repeat("y", 5000))); err != nil { // one huge write
		t.Fatal(err)
	}
	l.Close()
	var total int64
	for _, p := range []string{path, path + ".1"} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > 1000 {
			t.Errorf("%s is %d bytes, more than the cap of 1000", p, st.Size())
		}
		total += st.Size()
	}
	if total > 2000 {
		t.Errorf("the logs take %d bytes, more than twice the cap", total)
	}
	if data, _ := os.ReadFile(path); !strings.HasPrefix(string(data), "yyy") {
		t.Errorf("the newest file does not hold the newest write: %.20q", data)
	}
	// A symlink planted where the log goes is not followed.
	os.Remove(path)
	if err := os.Symlink("/etc/passwd", path); err != nil {
		t.Fatal(err)
	}
	if _, err := openRotatingLog(path, 1000); err == nil {
		t.Error("a symlink at the log's path was followed")
	}
}
