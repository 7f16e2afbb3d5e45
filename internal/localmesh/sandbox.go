package localmesh

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// How the runtime confines pods (the mechanism is in nsexec.go):
//
//   - Each pod has 65536 uids and gids of its own, 0..65535 inside, mapped
//     to a host range starting at its idBase that no other pod and no host
//     user has. Root in a pod is an unprivileged stranger on the host.
//   - Its containers see a view of the filesystem: the host's system
//     directories, the trellis binary, their working directory (all
//     read-only), a private /tmp; never the state directory (the CA key,
//     other pods' tokens, the API sockets).
//   - They keep no capabilities unless securityContext adds some, and
//     those hold only inside the pod's user namespace: the pod's network
//     (capture rules, routes, policy) belongs to the host and cannot be
//     changed from inside.
const (
	// idRangeStart is the host uid of the first pod's id 0: far above
	// the ids of host users and of other tools' subordinate ranges.
	idRangeStart = 1 << 31
	// maxIDRanges is how many pods may run at once: their ranges end
	// below 2^32-1, the invalid uid.
	maxIDRanges = (1<<32-idRangeStart)/podIDs - 1
	// sidecarUID is the sidecar's uid and gid inside its pod (Istio's).
	// The capture rules let its sockets through by the host uid it maps
	// to, so an app running as another uid is always captured.
	sidecarUID = 1337
	// sandboxRootDir, in the state directory, is the empty directory
	// every container's view is assembled on (in the container's own
	// mount namespace).
	sandboxRootDir = "sandbox-root"
	// podFilesMount is where a sidecar sees its pod's files (its token
	// and the control plane's trust bundle).
	podFilesMount = "/run/trellis/pod"
)

// idRanges hands out pods' host id ranges, lowest free first. Not safe for
// concurrent use; the Runtime's mutex guards it.
type idRanges struct {
	used map[uint32]bool // by slot
}

// allocate returns the host uid of a free range's id 0.
func (a *idRanges) allocate() (uint32, error) {
	if a.used == nil {
		a.used = map[uint32]bool{}
	}
	for slot := uint32(0); slot < maxIDRanges; slot++ {
		if !a.used[slot] {
			a.used[slot] = true
			return idRangeStart + slot*podIDs, nil
		}
	}
	return 0, fmt.Errorf("%d pods are running, the most one host can give ids of their own", maxIDRanges)
}

func (a *idRanges) release(base uint32) { delete(a.used, (base-idRangeStart)/podIDs) }

// sidecarHostID is the host uid and gid of p's sidecar: the capture rules
// let its sockets through, and its pod's files are shared with its group.
func (p *pod) sidecarHostID() uint32 { return p.idBase + sidecarUID }

// sandboxLocked returns how container spec of pod p is confined.
func (r *Runtime) sandboxLocked(p *pod, spec catalog.Container) Sandbox {
	sec := spec.Security
	s := Sandbox{
		Netns:  p.net.Netns,
		IDBase: p.idBase,
		UID:    uint32(sec.UID()), GID: uint32(sec.GID()),
		NoNewPrivs: !sec.AllowPrivilegeEscalation,
		Dir:        spec.WorkingDir,
		View: &View{
			Root:     filepath.Join(r.cfg.StateDir, sandboxRootDir),
			Binary:   r.cfg.Executable,
			EtcDir:   filepath.Join(netnsEtcDir, p.net.Netns),
			ReadOnly: sec.ReadOnlyRootFilesystem,
			// Whatever of the mesh's own files a bound directory would show.
			Hide: []string{r.cfg.StateDir},
		},
	}
	for _, g := range sec.SupplementalGroups {
		s.Groups = append(s.Groups, uint32(g))
	}
	for _, c := range sec.Capabilities {
		s.Caps = append(s.Caps, catalog.CapabilityNumbers[c])
	}
	for _, f := range []string{r.cfg.CACert, r.cfg.CAKey} {
		if f != "" {
			s.View.Hide = append(s.View.Hide, f)
		}
	}
	if !filepath.IsAbs(s.Dir) { // "" included: the directory trellis up ran in
		s.Dir = filepath.Join(r.cfg.WorkDir, s.Dir)
	}
	// The working directory is shown as it is on the host, unless it is
	// the host's root or a directory every view has anyway.
	if !coveredBySystemDirs(s.Dir) {
		s.View.Binds = append(s.View.Binds, Bind{Source: s.Dir, Target: s.Dir})
	}
	if spec.Name == sidecarName && p.injected {
		s.UID, s.GID, s.Groups, s.Caps, s.NoNewPrivs = sidecarUID, sidecarUID, nil, nil, true
		s.View.Binds = append(s.View.Binds, Bind{Source: r.podFiles(p.obj), Target: podFilesMount})
	}
	return s
}

// coveredBySystemDirs reports whether dir is "/" or inside one of the
// directories every view shows.
func coveredBySystemDirs(dir string) bool {
	dir = filepath.Clean(dir)
	if dir == "/" {
		return true
	}
	for _, d := range hostSystemDirs {
		if dir == d || strings.HasPrefix(dir, d+"/") {
			return true
		}
	}
	return false
}

// prepareSandboxRoot makes the empty directory views are assembled on.
func (r *Runtime) prepareSandboxRoot() error {
	dir := filepath.Join(r.cfg.StateDir, sandboxRootDir)
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return fmt.Errorf("sandbox root: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("sandbox root: %w", err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("sandbox root %s is not empty: remove what is in it", dir)
	}
	return nil
}
