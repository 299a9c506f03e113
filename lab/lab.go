//go:build linux

// Package lab builds a multi-host vxfabric lab on one Linux machine: hosts, a control node, an
// external network and a physical LAN as network namespaces wired through bridges in a switch
// namespace, the real `vxfab server` and `vxfab agent` processes inside them, and VMs as namespaces
// whose NICs are veths plugged in as ports.
//
// Topology of a lab named L with N hosts (every box is a network namespace):
//
//	vxl-L-ul (the switch)     br-ul: underlay 198.18.0.0/24      br-lan: the physical LAN
//	vxl-L-ctl                 ul0 198.18.0.2    vxfab server (embedded etcd, gRPC :7400, gossip :7946)
//	vxl-L-h1 .. vxl-L-hN      ul0 198.18.0.11.. (VTEP), lan0 (no address: bridged-mode uplink), vxfab agent
//	vxl-L-outside             ul0 198.18.0.254: the external network of nat and routed networks
//	vxl-L-lan                 lan0 192.168.77.1/24: the physical LAN of bridged networks
//	vxl-L-vm-VM               eth0, eth1, ...: one veth per port, host end in the VM's host namespace
//
// Everything the lab makes is recognisable and removable: namespaces are named vxl-<lab>-<role>,
// every process it starts names the lab's state directory (/run/vxfabric/lab/<lab>/) on its command
// line, and the state directory holds pid files, logs, the etcd data, the server's unix socket and
// (once the fabric is secured) certificates and tokens. Down removes all of it, also after a crash.
//
// This package never touches the machine's root network namespace (no links, routes, sysctls or
// nftables there) and never switches the namespace of a shared goroutine: netlink goes through
// handles bound to a namespace, and the few sockets opened inside a namespace are opened on a
// locked, dedicated OS thread (see inNamespace).
package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"time"
)

// DefaultNamespacePrefix starts the namespace names of every lab: vxl-<lab>-<role>.
const DefaultNamespacePrefix = "vxl-"

// DefaultStateRoot holds one directory per lab, plus the client profile of the lab brought up last.
const DefaultStateRoot = "/run/vxfabric/lab"

// Addresses and ports of the lab's fixed parts.
var (
	UnderlayPrefix = netip.MustParsePrefix("198.18.0.0/24")
	ControlAddr    = netip.MustParseAddr("198.18.0.2")
	OutsideAddr    = netip.MustParseAddr("198.18.0.254")
	LANPrefix      = netip.MustParsePrefix("192.168.77.0/24")
	LANAddr        = netip.MustParseAddr("192.168.77.1")
	// LANPool is the allocation pool of the lab's bridged networks: the part of the LAN that is the
	// fabric's to give (the LAN's own hosts, LANAddr, are below it).
	LANPool = "192.168.77.100-192.168.77.199"
	// LANMTU is the LAN's MTU: a bridged network's, as it must be (the server's default underlay
	// MTU, 1500, less VXLAN's 50), or frames from the LAN larger than the network's are dropped.
	LANMTU = 1450
)

const (
	// ServerPort is the server's gRPC port on the underlay.
	ServerPort = 7400
	// GossipPort is the memberlist port of the server and of every agent.
	GossipPort = 7946
	// MetricsPort is where each agent serves Prometheus metrics on its underlay address.
	MetricsPort = 9464
	// MaxHosts bounds --hosts (underlay addresses .11 to .42).
	MaxHosts = 32

	// UnderlayIface and LANIface are a host's two NICs.
	UnderlayIface = "ul0"
	LANIface      = "lan0"
)

// Roles of the fixed namespaces, as `lab exec` accepts them.
const (
	RoleSwitch  = "ul"
	RoleControl = "ctl"
	RoleOutside = "outside"
	RoleLAN     = "lan"
)

// The lab's name rules, compiled on first use: every vxfab process links this package, and only
// lab commands need them.
var (
	labNameRE  = lazyRegexp(`^[a-z][a-z0-9]{0,11}$`)
	hostRE     = lazyRegexp(`^h([1-9][0-9]?)$`)
	vmNameRE   = lazyRegexp(`^[a-z][a-z0-9-]{0,30}$`)
	nsPrefixRE = lazyRegexp(`^[a-z]{2,4}-$`)
)

func lazyRegexp(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}

// Config says which lab to build or operate on.
type Config struct {
	// Name tells labs apart: 1-12 characters of [a-z0-9] starting with a letter (no dash, so that
	// the namespace prefix vxl-<name>- of one lab never matches another's).
	Name string
	// Hosts is the number of host namespaces (h1..hN), 1..MaxHosts.
	Hosts int
	// StateRoot holds the lab's state directory <StateRoot>/<Name>.
	StateRoot string
	// Bin is the vxfab binary run as server and agents inside the lab.
	Bin string
	// ReadyTimeout bounds Up's wait for a healthy server and ALIVE agents.
	ReadyTimeout time.Duration
	// ProfilePath, when set, also receives the client profile (the CLI's default profile path).
	ProfilePath string
	// NamespacePrefix starts every namespace name, before "<name>-": "vxl-" for labs, "vxt-" for
	// labs that tests build.
	NamespacePrefix string
	// BridgeNetfilter leaves br_netfilter on for the bridges of the host and switch namespaces (net.bridge.
	// bridge-nf-call-{arptables,iptables,ip6tables} = 1), as on a Docker host. Off by default: a
	// namespace takes these sysctls from the machine's module state (on wherever br_netfilter is
	// loaded), while a plain host sends bridged frames through no conntrack and no inet hook. On
	// this machine br_netfilter cost the overlay path about 12 % of the sending core per byte.
	BridgeNetfilter bool
	Logger          *slog.Logger
}

// Default returns the configuration of the lab `vxfab lab up` builds with no flags.
func Default() Config {
	return Config{
		Name:            "lab",
		Hosts:           3,
		StateRoot:       DefaultStateRoot,
		ReadyTimeout:    30 * time.Second,
		NamespacePrefix: DefaultNamespacePrefix,
	}
}

// Validate reports a configuration the lab cannot be built from.
func (c Config) Validate() error {
	if !labNameRE().MatchString(c.Name) {
		return fmt.Errorf("lab name %q: want 1-12 characters of [a-z0-9] starting with a letter", c.Name)
	}
	if !nsPrefixRE().MatchString(c.NamespacePrefix) {
		return fmt.Errorf("lab %q: namespace prefix %q: want 2-4 letters and a dash", c.Name, c.NamespacePrefix)
	}
	if c.Hosts < 1 || c.Hosts > MaxHosts {
		return fmt.Errorf("lab %q: hosts %d: want 1..%d", c.Name, c.Hosts, MaxHosts)
	}
	if !filepath.IsAbs(c.StateRoot) {
		return fmt.Errorf("lab %q: state root %q must be an absolute path", c.Name, c.StateRoot)
	}
	if c.Bin == "" {
		return fmt.Errorf("lab %q: the vxfab binary is required", c.Name)
	}
	if c.ReadyTimeout <= 0 {
		return fmt.Errorf("lab %q: ready timeout %s must be positive", c.Name, c.ReadyTimeout)
	}
	return nil
}

// Lab operates on one lab, built or not. Its methods are safe to call from one goroutine at a time.
type Lab struct {
	cfg Config
	log *slog.Logger
}

// New returns a handle on the lab cfg names. It builds nothing.
func New(cfg Config) (*Lab, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Lab{cfg: cfg, log: log.With("lab", cfg.Name)}, nil
}

// Name is the lab's name.
func (l *Lab) Name() string { return l.cfg.Name }

// Hosts returns the host names h1..hN.
func (l *Lab) Hosts() []string {
	hosts := make([]string, l.cfg.Hosts)
	for i := range hosts {
		hosts[i] = HostName(i + 1)
	}
	return hosts
}

// HostName is the name of the i-th host (1-based), also its node name in the fabric.
func HostName(i int) string { return "h" + strconv.Itoa(i) }

// HostIndex parses a host name; ok is false for anything that is not h<1..MaxHosts>.
func HostIndex(host string) (int, bool) {
	m := hostRE().FindStringSubmatch(host)
	if m == nil {
		return 0, false
	}
	i, _ := strconv.Atoi(m[1])
	return i, i <= MaxHosts
}

// HostAddr is the underlay (VTEP) address of the i-th host.
func HostAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)})
}

// Names returns the labs that have a state directory under root, sorted: those brought up and not
// yet taken down (also after a crash).
func Names(root string) ([]string, error) {
	entries, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && labNameRE().MatchString(e.Name()) {
			names = append(names, e.Name()) // ReadDir sorts by name
		}
	}
	return names, nil
}

// Dir is the lab's state directory.
func (l *Lab) Dir() string { return filepath.Join(l.cfg.StateRoot, l.cfg.Name) }

// Namespace is the network namespace of a role: "ul", "ctl", "outside", "lan", a host "hN", or
// "vm-<VM>".
func (l *Lab) Namespace(role string) string { return l.NamespacePrefix() + role }

// NamespacePrefix starts the name of every namespace of the lab.
func (l *Lab) NamespacePrefix() string { return l.cfg.NamespacePrefix + l.cfg.Name + "-" }

// VMNamespace is the namespace of a VM.
func (l *Lab) VMNamespace(vm string) string { return l.Namespace("vm-" + vm) }

// ValidateVMName refuses names that are not usable as port-name prefixes or that shadow a role.
func ValidateVMName(vm string) error {
	if !vmNameRE().MatchString(vm) {
		return fmt.Errorf("vm name %q: want 1-31 characters of [a-z0-9-] starting with a letter", vm)
	}
	if _, isHost := HostIndex(vm); isHost {
		return fmt.Errorf("vm name %q is a host's name", vm)
	}
	switch vm {
	case RoleSwitch, RoleControl, RoleOutside, RoleLAN:
		return fmt.Errorf("vm name %q is a lab role", vm)
	}
	return nil
}

// TargetNamespace resolves what `lab exec` accepts: a host, a VM, or a fixed role.
func (l *Lab) TargetNamespace(target string) (string, error) {
	if i, ok := HostIndex(target); ok {
		if i > l.cfg.Hosts {
			return "", fmt.Errorf("host %q: the lab has hosts h1..h%d", target, l.cfg.Hosts)
		}
		return l.Namespace(target), nil
	}
	switch target {
	case RoleSwitch, RoleControl, RoleOutside, RoleLAN:
		return l.Namespace(target), nil
	}
	if err := ValidateVMName(target); err != nil {
		return "", fmt.Errorf("exec target %q: not a host, role or vm name", target)
	}
	ns := l.VMNamespace(target)
	if !namespaceExists(ns) {
		return "", fmt.Errorf("exec target %q: no such host, role or vm", target)
	}
	return ns, nil
}

// Paths inside the state directory.
func (l *Lab) metaPath() string { return filepath.Join(l.Dir(), "lab.json") }
func (l *Lab) etcdDir() string  { return filepath.Join(l.Dir(), "etcd") }
func (l *Lab) logDir() string   { return filepath.Join(l.Dir(), "log") }
func (l *Lab) runDir() string   { return filepath.Join(l.Dir(), "run") }

// AgentStateDir is the --state-dir of host h's agent (its applied revision, its remembered servers).
func (l *Lab) AgentStateDir(h string) string {
	return filepath.Join(l.Dir(), "agent-"+h)
}

// SocketPath is the server's unix socket, for clients in the root namespace.
func (l *Lab) SocketPath() string { return filepath.Join(l.Dir(), "server.sock") }

// SecurityDir is where certificates, keys and tokens of the lab's fabric live once it is secured.
func (l *Lab) SecurityDir() string { return filepath.Join(l.Dir(), "pki") }

// ProfilePath is the lab's own client profile (a copy also goes to Config.ProfilePath).
func (l *Lab) ProfilePath() string { return filepath.Join(l.Dir(), "client.json") }

// LogPath is the log file of a lab process ("server" or "agent-hN").
func (l *Lab) LogPath(proc string) string { return filepath.Join(l.logDir(), proc+".log") }

// CopyLogs copies the logs of the lab's processes into dir (created if missing), which Down would
// remove with the lab.
func (l *Lab) CopyLogs(dir string) error {
	files, err := filepath.Glob(filepath.Join(l.logDir(), "*.log"))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("keep the lab's logs: %w", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("keep the lab's logs: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o600); err != nil {
			return fmt.Errorf("keep the lab's logs: %w", err)
		}
	}
	return nil
}

// meta is what the state directory records about the lab, so that later commands need no flags.
type meta struct {
	Name    string    `json:"name"`
	Hosts   int       `json:"hosts"`
	Bin     string    `json:"bin"`
	Created time.Time `json:"created"`
	// NamespacePrefix is Config.NamespacePrefix of the lab (absent in labs of earlier versions,
	// which had DefaultNamespacePrefix).
	NamespacePrefix string `json:"namespace_prefix,omitempty"`
}

// ErrNoLab means the lab has not been brought up (or was taken down).
var ErrNoLab = errors.New("lab is not up")

// Open returns a handle on an existing lab, with the host count and binary recorded at Up.
// Fields of cfg left zero are taken from the record; Hosts and Bin always are.
func Open(cfg Config) (*Lab, error) {
	if cfg.Bin == "" {
		cfg.Bin = "-" // validated below against the record
	}
	if cfg.Hosts == 0 {
		cfg.Hosts = 1
	}
	l, err := New(cfg)
	if err != nil {
		return nil, err
	}
	m, err := l.readMeta()
	if err != nil {
		return nil, err
	}
	l.cfg.Hosts = m.Hosts
	l.adoptRecordedPrefix()
	if cfg.Bin == "-" {
		l.cfg.Bin = m.Bin
	}
	return l, nil
}

func (l *Lab) readMeta() (meta, error) {
	data, err := os.ReadFile(l.metaPath())
	if errors.Is(err, os.ErrNotExist) {
		up := "vxfab lab up"
		if l.cfg.Name != Default().Name {
			up += " --name " + l.cfg.Name
		}
		return meta{}, fmt.Errorf("lab %q: %w (run `%s`)", l.cfg.Name, ErrNoLab, up)
	}
	if err != nil {
		return meta{}, fmt.Errorf("lab %q: read %s: %w", l.cfg.Name, l.metaPath(), err)
	}
	var m meta
	if err := json.Unmarshal(data, &m); err != nil {
		return meta{}, fmt.Errorf("lab %q: parse %s: %w", l.cfg.Name, l.metaPath(), err)
	}
	if m.Name != l.cfg.Name || m.Hosts < 1 || m.Hosts > MaxHosts {
		return meta{}, fmt.Errorf("lab %q: %s records name %q with %d hosts", l.cfg.Name, l.metaPath(), m.Name, m.Hosts)
	}
	return m, nil
}

// adoptRecordedPrefix takes the namespace prefix the lab's record names, if any: commands on a lab
// act on its namespaces whatever --namespace-prefix they were given.
func (l *Lab) adoptRecordedPrefix() {
	data, err := os.ReadFile(l.metaPath())
	if err != nil {
		return
	}
	var m meta
	if json.Unmarshal(data, &m) == nil && nsPrefixRE().MatchString(m.NamespacePrefix) {
		l.cfg.NamespacePrefix = m.NamespacePrefix
	}
}

func (l *Lab) writeMeta(created time.Time) error {
	m := meta{Name: l.cfg.Name, Hosts: l.cfg.Hosts, Bin: l.cfg.Bin, Created: created, NamespacePrefix: l.cfg.NamespacePrefix}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(l.metaPath(), append(data, '\n'), 0o600)
}

// writeFileAtomic replaces path with data so that readers never see half a file.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	return nil
}
