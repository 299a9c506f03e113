//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vxfabric/vxfabric/lab"
)

func init() { register(newLabCmd) }

// labFlags are shared by every `vxfab lab` command.
type labFlags struct {
	name      string
	nameFlag  *pflag.Flag
	stateRoot string
	nsPrefix  string
	verbose   bool
	// creating is set by `lab up`, whose default name is always "lab".
	creating bool
}

// labName is --name, or without it the one lab that is up, so that `vxfab lab up --name x` needs no
// --name afterwards.
func (f *labFlags) labName() (string, error) {
	if f.creating || f.nameFlag.Changed {
		return f.name, nil
	}
	names, err := lab.Names(f.stateRoot)
	if err != nil {
		return "", fmt.Errorf("list the labs: %w", err)
	}
	switch {
	case len(names) == 1:
		return names[0], nil
	case len(names) > 1 && !slices.Contains(names, f.name):
		return "", fmt.Errorf("labs %s are up: name one with --name", strings.Join(names, ", "))
	}
	return f.name, nil
}

func (f *labFlags) config() (lab.Config, error) {
	cfg := lab.Default()
	name, err := f.labName()
	if err != nil {
		return cfg, err
	}
	cfg.Name = name
	cfg.StateRoot = f.stateRoot
	cfg.NamespacePrefix = f.nsPrefix
	if f.stateRoot == lab.DefaultStateRoot {
		cfg.ProfilePath = defaultProfilePath
	}
	level := slog.LevelWarn
	if f.verbose {
		level = slog.LevelInfo
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	bin, err := os.Executable()
	if err != nil {
		return cfg, fmt.Errorf("locate the vxfab binary: %w", err)
	}
	cfg.Bin = bin
	return cfg, nil
}

// open returns the lab as `lab up` recorded it.
func (f *labFlags) open() (*lab.Lab, error) {
	cfg, err := f.config()
	if err != nil {
		return nil, err
	}
	cfg.Bin = ""
	cfg.Hosts = 0
	return lab.Open(cfg)
}

func (f *labFlags) register(pf *pflag.FlagSet) {
	pf.StringVar(&f.name, "name", "lab", "lab name (1-12 characters of [a-z0-9]); other commands than up default to the one lab that is up")
	f.nameFlag = pf.Lookup("name")
	pf.StringVar(&f.stateRoot, "state-root", lab.DefaultStateRoot, "directory holding the labs' state")
	pf.BoolVarP(&f.verbose, "verbose", "v", false, "log what the lab does")
	pf.StringVar(&f.nsPrefix, "namespace-prefix", lab.DefaultNamespacePrefix, "prefix of the lab's namespace names (tests use vxt-)")
	_ = pf.MarkHidden("state-root")
	_ = pf.MarkHidden("namespace-prefix")
}

func newLabCmd() *cobra.Command {
	f := &labFlags{}
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "a multi-host vxfabric lab on this machine, built from network namespaces",
		Long: `A lab is hosts h1..hN, a control node running vxfab server, an "outside" external network and a
"lan" physical LAN, all network namespaces named vxl-<lab>-<role> on this machine, with vxfab agent
in every host. VMs are namespaces whose NICs are plugged in as ports. Needs root.`,
	}
	f.register(cmd.PersistentFlags())
	cmd.AddCommand(
		newLabUpCmd(f), newLabDownCmd(f), newLabStatusCmd(f), newLabExecCmd(f),
		newLabAgentCmd(f), newLabServerCmd(f), newLabHostCmd(f), newLabVMCmd(f),
		newLabDemoCmd(f),
	)
	return cmd
}

func newLabUpCmd(f *labFlags) *cobra.Command {
	var hosts int
	var defaultProfile bool
	cmd := &cobra.Command{
		Use:   "up",
		Short: "build the lab and start the fabric in it (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f.creating = true
			cfg, err := f.config()
			if err != nil {
				return err
			}
			cfg.Hosts = hosts
			if !cmd.Flags().Changed("hosts") {
				if existing, err := f.open(); err == nil {
					cfg.Hosts = len(existing.Hosts())
				}
			}
			if !defaultProfile {
				cfg.ProfilePath = ""
			}
			l, err := lab.New(cfg)
			if err != nil {
				return err
			}
			began := time.Now()
			if err := l.Up(cmd.Context()); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %q up in %.1fs: %d hosts, server healthy, every agent ALIVE\n",
				l.Name(), time.Since(began).Seconds(), len(l.Hosts()))
			fmt.Fprintln(cmd.OutOrStdout(), labUpNext(l, os.Args[0]))
			return nil
		},
	}
	hosts = lab.Default().Hosts
	newNumber(cmd.Flags(), &hosts, "hosts", 1, lab.MaxHosts, fmt.Sprintf("a number of hosts, 1-%d", lab.MaxHosts), "number of hosts")
	cmd.Flags().BoolVar(&defaultProfile, "default-profile", true, "make the CLI talk to this lab by default ("+defaultProfilePath+")")
	return cmd
}

// labUpNext is the line after `lab up`'s: how the CLI (run as cli) talks to the lab. When the
// default profile is another lab's, or none (--default-profile=false), that is through the lab's
// own profile, <state dir>/client.json.
func labUpNext(l *lab.Lab, cli string) string {
	status := cli + " lab status"
	if l.Name() != lab.Default().Name {
		status += " --name " + l.Name()
	}
	if env := l.ProfileEnv(); env != "" {
		return fmt.Sprintf("the CLI reaches it through its own profile: `export %s`, then try `%s node list`, `%s`", env, cli, status)
	}
	return fmt.Sprintf("the CLI now talks to it: try `%s node list`, `%s`", cli, status)
}

func newLabDownCmd(f *labFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "remove everything the lab made, also after a crash",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config()
			if err != nil {
				return err
			}
			l, err := lab.New(cfg)
			if err != nil {
				return err
			}
			if err := l.Down(cmd.Context()); err != nil {
				return err
			}
			left, err := l.Leftovers()
			if err != nil {
				return err
			}
			if len(left) > 0 {
				return fmt.Errorf("lab %q: still present after down: %v", l.Name(), left)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %q down: no namespace, process or state left\n", l.Name())
			return nil
		},
	}
}

func newLabStatusCmd(f *labFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "hosts, agents, networks, VMs and their addresses, on one screen",
		Long: "Shows the lab's hosts (underlay link, agent process, node status and APPLIED/DESIRED, the node's\n" +
			"revisions as vxfab node list shows them), its networks and its VMs with their NICs.\n\n" + revisionColumnsHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := f.open()
			if err != nil {
				return err
			}
			st := l.Status(cmd.Context())
			if cliOpts.output == "json" {
				return writeJSON(cmd.OutOrStdout(), st)
			}
			st.Print(cmd.OutOrStdout())
			return nil
		},
	}
}

func newLabExecCmd(f *labFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "exec H|VM|outside|lan|ctl|ul -- CMD [ARG...]",
		Short: "run a command inside a lab namespace (its exit status is passed through)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			argv := args[1:]
			if argv[0] == "--" { // flags stop at the target, so cobra leaves the separator in
				argv = argv[1:]
			}
			if len(argv) == 0 {
				return errors.New("lab exec: no command given")
			}
			l, err := f.open()
			if err != nil {
				return err
			}
			err = l.Exec(cmd.Context(), args[0], argv, lab.Stdio{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
			return execResult(err, args[0], argv[0])
		},
	}
	cmd.Flags().SetInterspersed(false)
	return cmd
}

// execResult is what `lab exec` makes of lab.Exec's error. A command that ran and failed passes
// its exit status through silently, as under ssh: it has said what went wrong on its own stderr.
// A run cut short (^C, SIGTERM) exits 130 with one line; vxfab's own failures (no such target or
// namespace, ip not found) print their line and exit 1.
func execResult(err error, target, command string) error {
	var exit *lab.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &exit) && errors.Is(err, context.Canceled):
		return exitCodeError{code: exit.Code, err: fmt.Errorf("%s in %s: interrupted", command, target)}
	case errors.As(err, &exit) && errors.Is(err, context.DeadlineExceeded):
		return exitCodeError{code: exit.Code, err: err}
	case errors.As(err, &exit) && errors.Is(err, lab.ErrCommandNotFound):
		return exitCodeError{code: exit.Code, err: err} // the command did not run: nothing said it
	case errors.As(err, &exit):
		return exitCodeError{code: exit.Code, err: err, quiet: true}
	}
	return err
}

func newLabAgentCmd(f *labFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "agent", Short: "fault injection on a host's agent: stop, start, kill, pause, resume"}
	// act runs do on host H's agent and says what happened, in one line; an agent that was not
	// running is said to be so (a fault injected into nothing is likely a mistake).
	act := func(use, short, done string, do func(*lab.Lab, *cobra.Command, string) error) *cobra.Command {
		return &cobra.Command{
			Use: use + " H", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				l, err := f.open()
				if err != nil {
					return err
				}
				h := args[0]
				pid, paused := l.AgentPID(h), l.AgentPaused(h)
				if err := do(l, cmd, h); err != nil {
					return err
				}
				switch {
				case use == "start" && pid != 0:
					done = "already running, ALIVE"
				case use != "start" && pid == 0:
					done = "was not running: nothing done"
				case use == "pause" && paused:
					done = "was paused already"
				case use == "resume" && !paused:
					done = "was not paused: nothing done"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "agent %s: %s\n", h, done)
				return nil
			},
		}
	}
	cmd.AddCommand(
		act("stop", "stop the agent gracefully (SIGTERM)", "stopped", func(l *lab.Lab, cmd *cobra.Command, h string) error {
			return l.StopAgent(cmd.Context(), h)
		}),
		act("kill", "kill the agent with SIGKILL, as a crash would", "killed", func(l *lab.Lab, cmd *cobra.Command, h string) error {
			return l.KillAgent(cmd.Context(), h)
		}),
		act("pause", "freeze the agent (SIGSTOP), as a stalled machine or a long pause would; its kernel keeps forwarding", "paused",
			func(l *lab.Lab, cmd *cobra.Command, h string) error { return l.PauseAgent(h) }),
		act("resume", "continue a paused agent (SIGCONT)", "resumed", func(l *lab.Lab, cmd *cobra.Command, h string) error {
			return l.ResumeAgent(h)
		}),
		act("start", "start the agent and wait until it is ALIVE", "started, ALIVE", func(l *lab.Lab, cmd *cobra.Command, h string) error {
			if err := l.StartAgent(cmd.Context(), h); err != nil {
				return err
			}
			return l.WaitAgents(cmd.Context(), h)
		}),
	)
	return cmd
}

func newLabServerCmd(f *labFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "server", Short: "stop or start the lab's server"}
	cmd.AddCommand(
		&cobra.Command{Use: "stop", Short: "stop the server gracefully (SIGTERM)", Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				l, err := f.open()
				if err != nil {
					return err
				}
				was := l.ServerPID()
				if err := l.StopServer(cmd.Context()); err != nil {
					return err
				}
				return said(cmd, was != 0, "server: stopped (the hosts keep forwarding; vxfab lab server start brings it back)", "server: was not running")
			}},
		&cobra.Command{Use: "start", Short: "start the server and wait until it is healthy", Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				l, err := f.open()
				if err != nil {
					return err
				}
				was := l.ServerPID()
				if err := l.StartServer(cmd.Context()); err != nil {
					return err
				}
				return said(cmd, was == 0, "server: started, healthy", "server: already running, healthy")
			}},
	)
	return cmd
}

// said prints yes when done, else no: the one line a lab command that changes something prints.
func said(cmd *cobra.Command, done bool, yes, no string) error {
	msg := yes
	if !done {
		msg = no
	}
	_, err := fmt.Fprintln(cmd.OutOrStdout(), msg)
	return err
}

func newLabHostCmd(f *labFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "host", Short: "cut or restore a host's underlay link"}
	cmd.AddCommand(
		&cobra.Command{Use: "cut H", Short: "take the host off the underlay: its gossip and VXLAN stop", Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				l, err := f.open()
				if err != nil {
					return err
				}
				if err := l.CutHost(args[0]); err != nil {
					return err
				}
				return said(cmd, true, "host "+args[0]+": cut off the underlay (vxfab lab host restore "+args[0]+" puts it back)", "")
			}},
		&cobra.Command{Use: "restore H", Short: "put a cut host back on the underlay and wait until its agent is ALIVE", Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				l, err := f.open()
				if err != nil {
					return err
				}
				if err := l.RestoreHost(args[0]); err != nil {
					return err
				}
				if l.AgentPID(args[0]) == 0 || l.ServerPID() == 0 {
					return said(cmd, true, "host "+args[0]+": back on the underlay (its agent or the server is not running)", "")
				}
				if err := l.WaitAgents(cmd.Context(), args[0]); err != nil {
					return err
				}
				return said(cmd, true, "host "+args[0]+": back on the underlay, its agent ALIVE", "")
			}},
	)
	return cmd
}

func newLabVMCmd(f *labFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "vm", Short: "VMs: namespaces whose NICs are plugged in as ports"}
	var host string
	var nics []string
	var wait bool
	create := &cobra.Command{
		Use:   "create VM --host H --nic TENANT/NETWORK[=IP] [--nic ...]",
		Short: "create the VM's ports, its namespace and NICs, and wait until every port is plugged",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := f.open()
			if err != nil {
				return err
			}
			spec := lab.VMSpec{Name: args[0], Host: host, NoWait: !wait}
			for _, n := range nics {
				nic, err := lab.ParseNIC(n)
				if err != nil {
					return err
				}
				spec.NICs = append(spec.NICs, nic)
			}
			vm, err := l.CreateVM(cmd.Context(), spec)
			if err != nil {
				return err
			}
			for i, p := range vm.Ports {
				fmt.Fprintf(cmd.OutOrStdout(), "%s eth%d  %s/%s  %s  %s  port %s (host interface %s on %s)\n",
					vm.Name, i, p.GetTenant(), p.GetNetwork(), p.GetIp(), p.GetMac(), p.GetName(), p.GetInterfaceName(), vm.Host)
			}
			return nil
		},
	}
	create.Flags().StringVar(&host, "host", "", "host the VM runs on (h1..hN)")
	create.Flags().StringArrayVar(&nics, "nic", nil, "a NIC: TENANT/NETWORK[=IP]; repeat for a multi-homed VM")
	create.Flags().BoolVar(&wait, "wait", true, "wait until the host's agent has plugged every port")
	_ = create.MarkFlagRequired("host")
	_ = create.MarkFlagRequired("nic")
	del := &cobra.Command{
		Use:   "delete VM",
		Short: "delete the VM's ports and namespace",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := f.open()
			if err != nil {
				return err
			}
			removed, err := l.RemoveVM(cmd.Context(), args[0])
			if err != nil {
				return labError(err)
			}
			return said(cmd, true, vmDeleted(args[0], removed), "")
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "list the VMs: host, and per NIC its network, address, MAC and whether it is plugged",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := f.open()
			if err != nil {
				return err
			}
			st := l.Status(cmd.Context())
			if cliOpts.output == "json" {
				if err := writeJSON(cmd.OutOrStdout(), map[string]any{"vms": st.VMs}); err != nil {
					return err
				}
			} else {
				lab.PrintVMs(cmd.OutOrStdout(), st.VMs)
			}
			// Without the API the list holds only the VMs' namespaces: say so, and fail.
			if len(st.Errors) > 0 {
				return fmt.Errorf("lab %q: %s", st.Name, strings.Join(st.Errors, "; "))
			}
			return nil
		},
	}
	var to string
	migrate := &cobra.Command{
		Use:   "migrate VM --host H",
		Short: "move a running VM to another host, as a live migration does: its NICs keep their MAC, address and sessions",
		Long: `Moves the host end of each of the VM's NICs into the new host's namespace, then rebinds the
port to the new host (vxfab port move); the new host's agent plugs it and every other host's FDB
follows. It returns once every port is plugged on the new host. When the fabric refuses one of
the ports there (a network that cannot be on that host), the NICs and ports already moved go back
and the VM stays where it was. Running it again finishes a migration cut short (a killed process).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := f.open()
			if err != nil {
				return err
			}
			began := time.Now()
			vm, err := l.MigrateVM(cmd.Context(), args[0], to)
			if err != nil {
				return labError(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "vm %s now on %s: %d port(s) plugged there after %s\n",
				vm.Name, vm.Host, len(vm.Ports), time.Since(began).Round(time.Millisecond))
			return nil
		},
	}
	migrate.Flags().StringVar(&to, "host", "", "host to move the VM to (h1..hN)")
	_ = migrate.MarkFlagRequired("host")
	cmd.AddCommand(create, list, migrate, del)
	return cmd
}

// vmDeleted is the line `lab vm delete` prints: what there was of the VM, now gone.
func vmDeleted(name string, r lab.RemovedVM) string {
	ports := "its port"
	if r.Ports != 1 {
		ports = fmt.Sprintf("its %d ports", r.Ports)
	}
	switch {
	case r.Ports == 0:
		return "vm " + name + " deleted (it had no ports)"
	case !r.Namespace:
		return "vm " + name + " deleted: " + ports + " (it had no namespace)"
	}
	return "vm " + name + " deleted, with " + ports
}

func newLabDemoCmd(f *labFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "build two tenants, a network of each mode and VMs, then check who reaches whom with real traffic",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := f.open()
			if err != nil {
				return err
			}
			return l.Demo(cmd.Context(), cmd.OutOrStdout(), os.Args[0])
		},
	}
}

// labError gives the lab's errors about missing things the code the API would give them, so that
// they print as the API's do ("NotFound: ...").
// writeJSON writes v as indented JSON (the lab's -o json: its status is not a proto message).
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func labError(err error) error {
	if errors.Is(err, lab.ErrNoSuchVM) {
		return status.Error(codes.NotFound, err.Error())
	}
	return err
}
