package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netns"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/trellis-mesh/trellis/internal/meshpb"
)

// newProxyConfigCmd reads a sidecar's configuration from its admin port
// (127.0.0.1:15000 inside the pod), as istioctl proxy-config does.
func newProxyConfigCmd(o *options) *cobra.Command {
	var namespace, output string
	cmd := &cobra.Command{
		Use:   "proxy-config POD [listeners|routes|endpoints|certs|all]",
		Short: "Show the config a pod's sidecar runs: listeners, routes, endpoints, certificates",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			what := "all"
			if len(args) == 2 {
				what = args[1]
			}
			switch what {
			case "listeners", "routes", "endpoints", "certs", "all":
			default:
				return fmt.Errorf("unknown section %q: use listeners, routes, endpoints, certs or all", what)
			}
			nsName, err := podNetns(cmd.Context(), o, namespace, args[0])
			if err != nil {
				return err
			}
			return showProxyConfig(o.out, nsName, what, output == "json")
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "the pod's namespace")
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json")
	return cmd
}

func podNetns(ctx context.Context, o *options, namespace, name string) (string, error) {
	pods, err := o.client().Pods(ctx)
	if err != nil {
		return "", err
	}
	for _, p := range pods {
		if p.Namespace == namespace && p.Name == name {
			return p.Netns, nil
		}
	}
	return "", fmt.Errorf("pod %s/%s not found (see `trellis get pods -n %s`)", namespace, name, namespace)
}

// adminGet fetches path from the sidecar admin port inside netns nsName.
// The socket is created inside the pod's namespace and keeps it after
// the thread switches back.
func adminGet(nsName, path string) ([]byte, error) {
	conn, err := dialInNetns(nsName, "127.0.0.1:15000")
	if err != nil {
		return nil, fmt.Errorf("sidecar admin port of %s: %w (does the pod run a sidecar?)", nsName, err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) { return conn, nil },
	}}
	resp, err := hc.Get("http://sidecar" + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("sidecar admin %s: %s: %s", path, resp.Status, data)
	}
	return data, nil
}

func dialInNetns(nsName, addr string) (net.Conn, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, err
	}
	defer orig.Close()
	target, err := netns.GetFromName(nsName)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return nil, err
	}
	defer netns.Set(orig)
	return net.DialTimeout("tcp", addr, 5*time.Second)
}

func showProxyConfig(w io.Writer, nsName, what string, asJSON bool) error {
	data, err := adminGet(nsName, "/config_dump")
	if err != nil {
		return err
	}
	cfg := &meshpb.ProxyConfig{}
	if err := protojson.Unmarshal(data, cfg); err != nil {
		return fmt.Errorf("sidecar config: %w", err)
	}
	var certs json.RawMessage
	if what == "certs" || what == "all" {
		if certs, err = adminGet(nsName, "/certs"); err != nil {
			return err
		}
	}
	if asJSON {
		out := map[string]any{}
		if what == "all" || what != "certs" {
			out["config"] = json.RawMessage(data)
		}
		if certs != nil {
			out["certs"] = certs
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	tw := tabwriter.NewWriter(terminalSafe(w), 0, 4, 2, ' ', 0)
	defer tw.Flush()
	if what == "listeners" || what == "all" {
		fmt.Fprintln(tw, "ADDRESS\tPORT\tPROTOCOL\tSERVICE")
		for _, s := range cfg.GetServices() {
			for _, p := range s.GetPorts() {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s.%s\n", s.GetVip(), p.GetPort(), p.GetProtocol(), s.GetName(), s.GetNamespace())
			}
		}
		fmt.Fprintln(tw)
	}
	if what == "routes" || what == "all" {
		fmt.Fprintln(tw, "SERVICE\tPORT\tBALANCING\tENDPOINTS")
		for _, s := range cfg.GetServices() {
			for _, p := range s.GetPorts() {
				fmt.Fprintf(tw, "%s.%s\t%d\t%s\t%d\n", s.GetName(), s.GetNamespace(), p.GetPort(), s.GetLoadBalancing(), len(p.GetEndpoints()))
			}
		}
		fmt.Fprintln(tw)
	}
	if what == "endpoints" || what == "all" {
		fmt.Fprintln(tw, "ENDPOINT\tSERVICE\tIDENTITY")
		for _, s := range cfg.GetServices() {
			for _, p := range s.GetPorts() {
				for _, e := range p.GetEndpoints() {
					id := e.GetIdentity()
					if id == "" {
						id = "(no sidecar: plaintext)"
					}
					fmt.Fprintf(tw, "%s:%d\t%s.%s:%d\t%s\n", e.GetAddress(), e.GetPort(), s.GetName(), s.GetNamespace(), p.GetPort(), id)
				}
			}
		}
		fmt.Fprintln(tw)
	}
	if certs != nil {
		var c struct {
			Identity, Serial string
			NotAfter         time.Time
		}
		_ = json.Unmarshal(certs, &c)
		fmt.Fprintln(tw, "IDENTITY\tSERIAL\tEXPIRES")
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Identity, c.Serial, c.NotAfter.Format(time.RFC3339))
	}
	return nil
}
