// Package netnstest gives tests throwaway network namespaces: real kernel
// networking (links, routes, nftables) isolated from the host and removed
// when the test ends. Imported only by _test files; tests using it need
// root and skip without it.
package netnstest

import (
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// New returns a fresh network namespace, closed (and so removed) when the
// test ends. It skips the test when not root.
func New(t *testing.T) netns.NsHandle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	var ns netns.NsHandle
	Run(t, 0, func() (err error) {
		ns, err = netns.New() // switches this thread, which Run discards
		return err
	})
	t.Cleanup(func() { ns.Close() }) // the last reference: the namespace goes
	return ns
}

// Run runs f on a dedicated OS thread switched into ns (0: the caller's
// namespace) and discards the thread afterwards, so no other goroutine ever
// runs in ns. Sockets f opens stay in ns. A non-nil error fails the test.
func Run(t *testing.T, ns netns.NsHandle, f func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with this goroutine
		if ns != 0 {
			if err := netns.Set(ns); err != nil {
				errc <- err
				return
			}
		}
		errc <- f()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
