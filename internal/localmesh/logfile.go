package localmesh

import (
	"os"
	"sync"
)

// DefaultLogMaxBytes is how large a container's log grows before it is
// rotated: the current file and one older are kept, so a container's logs
// take at most twice this, however much it (or whoever makes it log:
// every refused request is a line) writes.
const DefaultLogMaxBytes = 10 << 20

// rotatingLog is a container's log file, rotated by size: at max bytes the
// file becomes PATH.1 (replacing the one before) and a new one starts.
// Files are opened without following symlinks. Safe for concurrent use.
type rotatingLog struct {
	path string
	max  int64

	mu   sync.Mutex
	f    *os.File // guarded by mu
	size int64    // guarded by mu
}

func openRotatingLog(path string, max int64) (*rotatingLog, error) {
	l := &rotatingLog{path: path, max: max}
	if err := l.openLocked(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *rotatingLog) openLocked() error {
	f, err := openNoFollow(l.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	l.f, l.size = f, st.Size()
	return nil
}

// Write appends p, rotating first when p would take the file past max.
// A write larger than max is cut to max: the log keeps its bound.
func (l *rotatingLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(p)
	if int64(len(p)) > l.max {
		p = p[:l.max]
	}
	if l.size+int64(len(p)) > l.max && l.size > 0 {
		l.f.Close()
		if err := os.Rename(l.path, l.path+".1"); err != nil && !os.IsNotExist(err) {
			return 0, err
		}
		if err := l.openLocked(); err != nil {
			return 0, err
		}
	}
	w, err := l.f.Write(p)
	l.size += int64(w)
	if err != nil {
		return w, err
	}
	return n, nil
}

func (l *rotatingLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}
