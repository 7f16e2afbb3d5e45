// Command trellis is the Trellis CLI; it also runs a whole mesh on one host
// (`trellis up`). See internal/cli.
package main

import (
	"context"
	"fmt"
	"os"
	"runtime"

	"github.com/trellis-mesh/trellis/internal/cli"
	"github.com/trellis-mesh/trellis/internal/localmesh"
)

func init() {
	if len(os.Args) > 1 && os.Args[1] == localmesh.NSExecCommand {
		// The sandbox's supervisor confines its main thread, whose
		// namespaces are the ones /proc/PID/ns shows (and `trellis exec`
		// joins): main must run there.
		runtime.LockOSThread()
	}
}

func main() {
	// The runtime starts container processes as
	// `trellis __nsexec SANDBOX -- CMD...`, which confines itself and
	// starts `trellis __nsinit SANDBOX -- CMD...`: both before anything
	// else starts.
	if len(os.Args) > 3 && os.Args[3] == "--" {
		switch os.Args[1] {
		case localmesh.NSExecCommand:
			os.Exit(sandboxed(func(s localmesh.Sandbox) (int, error) {
				return localmesh.RunSandboxed(s, os.Args[4:], os.Environ())
			}))
		case localmesh.NSInitCommand:
			os.Exit(sandboxed(func(s localmesh.Sandbox) (int, error) {
				return 127, localmesh.InitSandboxed(s, os.Args[4:], os.Environ())
			}))
		}
	}
	os.Exit(cli.Main(context.Background(), os.Args[1:]))
}

// sandboxed parses the sandbox argument and runs step with it, returning
// the exit status.
func sandboxed(step func(localmesh.Sandbox) (int, error)) int {
	s, err := localmesh.ParseSandbox(os.Args[2])
	code := 127
	if err == nil {
		code, err = step(s)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "trellis:", err)
	}
	return code
}
