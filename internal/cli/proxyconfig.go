package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netns"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/trellis-mesh/trellis/internal/kube"
	"github.com/trellis-mesh/trellis/internal/kubeclient"
	"github.com/trellis-mesh/trellis/internal/meshpb"
)

// newProxyConfigCmd reads a sidecar's configuration from its admin port
// (127.0.0.1:15000 inside the pod), as istioctl proxy-config does.
func newProxyConfigCmd(o *options) *cobra.Command {
	var namespace, output string
	var cluster clusterFlags
	cmd := &cobra.Command{
		Use:   "proxy-config POD [listeners|routes|endpoints|certs|all] [--kubernetes]",
		Short: "Show the config a pod's sidecar runs: listeners, routes, endpoints, certificates",
		Long: `Show the config a pod's sidecar runs: listeners, routes, endpoints, certificates,
read from the sidecar's admin port (127.0.0.1:15000 inside the pod).

With --kubernetes the pod is one of the cluster's, reached by a port-forward
through the API server, as kubectl port-forward does.`,
		Args: cobra.RangeArgs(1, 2),
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
			if cluster.kubernetes {
				get, stop, err := clusterAdmin(cmd.Context(), &cluster, namespace, args[0], o.err)
				if err != nil {
					return err
				}
				defer stop()
				return showProxyConfig(o.out, get, what, output == "json")
			}
			nsName, err := podNetns(cmd.Context(), o, namespace, args[0])
			if err != nil {
				return err
			}
			return showProxyConfig(o.out, func(path string) ([]byte, error) { return adminGet(nsName, path) }, what, output == "json")
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "the pod's namespace")
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json")
	cluster.register(cmd)
	return cmd
}

// clusterAdmin port-forwards a free local port to the admin port of a
// cluster pod's sidecar and returns a getter of its paths, and what stops
// the forward. The forward's own errors go to errOut, as kubectl's do.
func clusterAdmin(ctx context.Context, cluster *clusterFlags, namespace, pod string, errOut io.Writer) (func(string) ([]byte, error), func(), error) {
	kc, err := cluster.connect()
	if err != nil {
		return nil, nil, err
	}
	return forwardAdmin(ctx, kc, namespace, pod, errOut)
}

// forwardAdmin is clusterAdmin with a connected client.
func forwardAdmin(ctx context.Context, kc *kubeclient.Clients, namespace, pod string, errOut io.Writer) (func(string) ([]byte, error), func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	ctx, cancel := context.WithCancel(ctx)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- kube.PortForward(ctx, kc, namespace, pod, port, adminPort, ready, errOut) }()
	select {
	case err := <-done:
		cancel()
		return nil, nil, fmt.Errorf("pod %s/%s: %w (does it exist? kubectl -n %s get pod %s)", namespace, pod, err, namespace, pod)
	case <-ready:
	}
	get := func(path string) ([]byte, error) {
		data, err := httpGet("http://"+net.JoinHostPort("127.0.0.1", strconv.Itoa(port))+path, nil)
		if err != nil {
			return nil, fmt.Errorf("sidecar admin port of %s/%s: %w (does the pod run a sidecar?)", namespace, pod, err)
		}
		return data, nil
	}
	return get, func() { cancel(); <-done }, nil
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
	conn, err := dialInNetns(nsName, net.JoinHostPort("127.0.0.1", strconv.Itoa(adminPort)))
	if err != nil {
		return nil, fmt.Errorf("sidecar admin port of %s: %w (does the pod run a sidecar?)", nsName, err)
	}
	return httpGet("http://sidecar"+path, func(context.Context, string, string) (net.Conn, error) { return conn, nil })
}

// adminPort is where a sidecar serves its admin API, inside its pod.
const adminPort = 15000

// httpGet fetches url (with dial, when given, as the only connection) and
// returns the body of a 200 answer, or an error with what came instead.
func httpGet(url string, dial func(context.Context, string, string) (net.Conn, error)) ([]byte, error) {
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dial}}
	resp, err := hc.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s: %s", url, resp.Status, data)
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

// showProxyConfig prints section what of the config a sidecar's admin API,
// read by get, serves.
func showProxyConfig(w io.Writer, get func(path string) ([]byte, error), what string, asJSON bool) error {
	data, err := get("/config_dump")
	if err != nil {
		return err
	}
	cfg := &meshpb.ProxyConfig{}
	if err := protojson.Unmarshal(data, cfg); err != nil {
		return fmt.Errorf("sidecar config: %w", err)
	}
	var certs json.RawMessage
	if what == "certs" || what == "all" {
		if certs, err = get("/certs"); err != nil {
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
