// Package client holds what every API client of vxfabric shares: the client profile, a file that
// says how to reach a server (address, CA, client certificate, token). `vxfab lab up` writes one;
// the CLI reads it. It also holds the call options every client dials with. It never dials by itself
// and holds no state.
package client

import (
	"encoding/json"
	"fmt"
	"os"

	"google.golang.org/grpc"
)

// MaxResponseBytes bounds the answers a client accepts. gRPC's default, 4 MiB, is a list of about
// 30,000 ports: an admin's `port list` of a large fabric would fail with ResourceExhausted.
const MaxResponseBytes = 256 << 20

// CallOptions are the call options every API client of vxfabric dials with.
func CallOptions() grpc.DialOption {
	return grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxResponseBytes))
}

// DefaultProfilePath is where `vxfab lab up` records how the CLI reaches the lab's server, so that
// commands need no flags afterwards.
const DefaultProfilePath = "/run/vxfabric/lab/client.json"

// Profile tells a client how to reach a server.
type Profile struct {
	// Server is host:port or unix:///path.
	Server    string `json:"server"`
	TLSCA     string `json:"tls_ca,omitempty"`
	TLSCert   string `json:"tls_cert,omitempty"`
	TLSKey    string `json:"tls_key,omitempty"`
	TokenFile string `json:"token_file,omitempty"`
	Insecure  bool   `json:"insecure,omitempty"`
}

// ReadProfile reads a profile file. A missing file is an error wrapping os.ErrNotExist.
func ReadProfile(path string) (Profile, error) {
	var p Profile
	data, err := os.ReadFile(path)
	if err != nil {
		return p, err
	}
	if err := json.Unmarshal(data, &p); err != nil {
		return p, fmt.Errorf("client profile %s: %w", path, err)
	}
	return p, nil
}

// Marshal is the profile as the file holds it.
func (p Profile) Marshal() ([]byte, error) {
	data, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}
