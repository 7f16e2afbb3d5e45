package route

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/trellis-mesh/trellis/internal/meshpb"
)

// Routes survive the trip through a proxy's config (and its JSON form, a
// static config file's): the tables compiled on either side print the
// same.
func TestProtoRoundTrip(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.yaml")
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			rs := parse(t, string(data))
			prs, err := ToProto(rs)
			if err != nil {
				t.Fatal(err)
			}
			cfg := &meshpb.ProxyConfig{Routes: prs}
			js, err := protojson.Marshal(cfg)
			if err != nil {
				t.Fatal(err)
			}
			var back meshpb.ProxyConfig
			if err := protojson.Unmarshal(js, &back); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(cfg, &back) {
				t.Fatalf("the config's JSON form does not read back the same:\n%s", js)
			}
			got, err := FromProto(back.Routes)
			if err != nil {
				t.Fatal(err)
			}
			target := graphHTTP
			if strings.HasPrefix(filepath.Base(file), "grpc") {
				target.Port = 9090
			}
			want := Compile(target, rs, mesh).String() + statusText(Validate(rs, mesh))
			if s := Compile(target, got, mesh).String() + statusText(Validate(got, mesh)); s != want {
				t.Errorf("after the trip the routes compile to\n%s\nwant\n%s", s, want)
			}
		})
	}
}

func TestFromProtoRefusesWhatDoesNotDecode(t *testing.T) {
	for _, r := range []*meshpb.Route{
		{Kind: "TCPRoute", Namespace: "db", Name: "x"},
		{Kind: "HTTPRoute", Namespace: "db", Name: "x", Created: "yesterday"},
	} {
		if _, err := FromProto([]*meshpb.Route{r}); err == nil || !strings.Contains(err.Error(), "db/x") {
			t.Errorf("FromProto(%v) = %v, want an error naming db/x", r, err)
		}
	}
}
