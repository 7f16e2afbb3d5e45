//go:build race

package rawio

import (
	"errors"
	"syscall"
)

// Under the race detector, sysRead and sysWrite go through syscall.Read
// and syscall.Write: the same system calls on the same non-blocking
// socket, plus the annotations by which the detector learns that what a
// goroutine did before writing to a socket happened before what its
// reader does next (net's own I/O has them). Without them, a test that
// sets a value and then sends a request would be reported racing with the
// proxy that reads the value after receiving it.
func sysRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	return max(n, 0), errnoOf(err)
}

func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	return max(n, 0), errnoOf(err)
}

func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if err != nil && !errors.As(err, &e) {
		return syscall.EIO
	}
	return e
}
