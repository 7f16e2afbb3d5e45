package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/trellis-mesh/trellis/internal/unixapi"
)

// DefaultMeshAPI is the one-host mesh's API socket in its default state
// directory.
const DefaultMeshAPI = "/var/lib/trellis/api.sock"

// OneHostSource is a Source over a one-host mesh's API at socket: it long
// polls GET /v1/policy, whose answer is a Snapshot.
func OneHostSource(socket string) Source {
	return meshAPI{socket: socket, api: unixapi.NewClient(socket, 60*time.Second)}
}

type meshAPI struct {
	socket string
	api    *unixapi.Client
}

func (m meshAPI) Next(ctx context.Context, version uint64, wait time.Duration) (Snapshot, error) {
	var snap Snapshot
	err := m.api.Do(ctx, http.MethodGet, fmt.Sprintf("/v1/policy?after=%d&wait=%d", version, wait.Milliseconds()), nil, &snap)
	switch {
	case errors.Is(err, unixapi.ErrRootOnly):
		err = fmt.Errorf("the mesh API %s is root-only: run the node agent as root", m.socket)
	case errors.Is(err, unixapi.ErrNoServer):
		err = fmt.Errorf("no mesh answers on %s: start one with `trellis up -f FILE`", m.socket)
	}
	return snap, err
}
