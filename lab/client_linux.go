package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vxfabric/vxfabric/controlplane/client"
	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// Profile tells a client how to reach the lab's server (the CLI's client profile).
type Profile = client.Profile

// AdminTokenPath is where the lab keeps the server's admin token once the fabric is secured; the
// profile names it when it exists.
func (l *Lab) AdminTokenPath() string { return filepath.Join(l.SecurityDir(), "admin.token") }

// Profile is how a client in the root namespace reaches this lab's server: its unix socket, which
// only root can open.
func (l *Lab) Profile() Profile {
	p := Profile{Server: "unix://" + l.SocketPath()}
	if _, err := os.Stat(l.AdminTokenPath()); err == nil {
		p.TokenFile = l.AdminTokenPath()
	}
	return p
}

// DefaultProfileIsThis tells whether the CLI's default profile (Config.ProfilePath) points at this
// lab, so that vxfab with no flags talks to it.
func (l *Lab) DefaultProfileIsThis() bool {
	if l.cfg.ProfilePath == "" {
		return false
	}
	p, err := client.ReadProfile(l.cfg.ProfilePath)
	return err == nil && p.Server == l.Profile().Server
}

// ProfileEnv is what goes in front of a vxfab command for it to talk to this lab: nothing when the
// default profile points at the lab, else VXFAB_PROFILE=<the lab's own profile>.
func (l *Lab) ProfileEnv() string {
	if l.DefaultProfileIsThis() {
		return ""
	}
	return "VXFAB_PROFILE=" + l.ProfilePath()
}

func (l *Lab) writeProfiles() error {
	data, err := l.Profile().Marshal()
	if err != nil {
		return err
	}
	paths := []string{l.ProfilePath()}
	if l.cfg.ProfilePath != "" {
		paths = append(paths, l.cfg.ProfilePath)
	}
	for _, p := range paths {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("client profile: %w", err)
		}
		if err := writeFileAtomic(p, data, 0o600); err != nil {
			return fmt.Errorf("client profile: %w", err)
		}
	}
	return nil
}

// removeProfile removes the shared profile if it points at this lab (another lab's is kept). When
// exactly one other lab is up, its profile takes the shared one's place, so that the CLI goes on
// finding the one running lab.
func (l *Lab) removeProfile() error {
	if l.cfg.ProfilePath == "" {
		return nil
	}
	p, err := client.ReadProfile(l.cfg.ProfilePath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err == nil && p.Server != l.Profile().Server {
		return nil
	}
	var others []string
	if names, err := Names(l.cfg.StateRoot); err == nil {
		others = slices.DeleteFunc(names, func(n string) bool { return n == l.cfg.Name })
	}
	if len(others) == 1 {
		data, err := os.ReadFile(filepath.Join(l.cfg.StateRoot, others[0], "client.json"))
		if err == nil {
			if err := writeFileAtomic(l.cfg.ProfilePath, data, 0o600); err != nil {
				return fmt.Errorf("client profile of lab %q: %w", others[0], err)
			}
			return nil
		}
	}
	if err := os.Remove(l.cfg.ProfilePath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove client profile: %w", err)
	}
	return nil
}

// tokenFileCreds attaches the admin token to every call, read from the file the server writes on
// its first start (so a connection opened before that start works once the token exists).
type tokenFileCreds struct{ path string }

func (t tokenFileCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	data, err := os.ReadFile(t.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // the open methods (health) need none; the rest fail with Unauthenticated
	}
	if err != nil {
		return nil, fmt.Errorf("read admin token: %w", err)
	}
	return map[string]string{"authorization": "Bearer " + strings.TrimSpace(string(data))}, nil
}

// RequireTransportSecurity is false: the token only travels over the lab's unix socket.
func (tokenFileCreds) RequireTransportSecurity() bool { return false }

// Dial connects to the lab's server over its unix socket (plaintext: a local socket only root can
// open), with the admin token. The caller closes the connection.
func (l *Lab) Dial() (*grpc.ClientConn, error) {
	p := l.Profile()
	conn, err := grpc.NewClient(p.Server, client.CallOptions(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(tokenFileCreds{path: l.AdminTokenPath()}))
	if err != nil {
		return nil, fmt.Errorf("lab %q: connect to %s: %w", l.cfg.Name, p.Server, err)
	}
	return conn, nil
}

// Client bundles the API clients of one connection.
type Client struct {
	Conn     *grpc.ClientConn
	Tenants  vxfabricv1.TenantServiceClient
	Networks vxfabricv1.NetworkServiceClient
	Ports    vxfabricv1.PortServiceClient
	Nodes    vxfabricv1.NodeServiceClient
	Health   healthpb.HealthClient
}

// Client dials the lab's server and returns the API clients. The caller closes Conn.
func (l *Lab) Client() (*Client, error) {
	conn, err := l.Dial()
	if err != nil {
		return nil, err
	}
	return &Client{
		Conn:     conn,
		Tenants:  vxfabricv1.NewTenantServiceClient(conn),
		Networks: vxfabricv1.NewNetworkServiceClient(conn),
		Ports:    vxfabricv1.NewPortServiceClient(conn),
		Nodes:    vxfabricv1.NewNodeServiceClient(conn),
		Health:   healthpb.NewHealthClient(conn),
	}, nil
}

// serverHealthy asks the server's gRPC health service (SERVING once etcd is reachable).
func serverHealthy(ctx context.Context, c *Client) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := c.Health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health %s", resp.GetStatus())
	}
	return nil
}

// waitServer waits until the server answers its health check on the unix socket.
func (l *Lab) waitServer(ctx context.Context) error {
	c, err := l.Client()
	if err != nil {
		return err
	}
	defer c.Conn.Close()
	var last error
	err = poll(ctx, l.cfg.ReadyTimeout, func() (bool, error) {
		if l.running(serverProc) == 0 {
			return false, fmt.Errorf("server exited: %s", l.logTail(serverProc, 5))
		}
		last = serverHealthy(ctx, c)
		return last == nil, nil
	})
	if err != nil {
		return fmt.Errorf("lab %q: server not healthy (%v): %w", l.cfg.Name, last, err)
	}
	return nil
}

// WaitAgents waits until every given host shows ALIVE in the server's node list (all hosts when
// none are given).
func (l *Lab) WaitAgents(ctx context.Context, hosts ...string) error {
	if len(hosts) == 0 {
		hosts = l.Hosts()
	}
	c, err := l.Client()
	if err != nil {
		return err
	}
	defer c.Conn.Close()
	var missing []string
	err = poll(ctx, l.cfg.ReadyTimeout, func() (bool, error) {
		for _, h := range hosts {
			if l.running(agentProc(h)) == 0 {
				return false, fmt.Errorf("agent %s exited: %s", h, l.logTail(agentProc(h), 5))
			}
		}
		status, err := nodeStatuses(ctx, c)
		if err != nil {
			missing = []string{err.Error()}
			return false, nil
		}
		missing = missing[:0]
		for _, h := range hosts {
			if status[h] != vxfabricv1.NodeStatus_NODE_STATUS_ALIVE {
				missing = append(missing, h+"="+strings.TrimPrefix(status[h].String(), "NODE_STATUS_"))
			}
		}
		return len(missing) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("lab %q: agents not ALIVE (%s): %w", l.cfg.Name, strings.Join(missing, ", "), err)
	}
	return nil
}

func nodeStatuses(ctx context.Context, c *Client) (map[string]vxfabricv1.NodeStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := c.Nodes.ListNodes(ctx, &vxfabricv1.ListNodesRequest{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	status := map[string]vxfabricv1.NodeStatus{}
	for _, n := range resp.GetNodes() {
		status[n.GetName()] = n.GetStatus()
	}
	return status, nil
}
