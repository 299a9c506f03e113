// Command vxfab is the one binary of vxfabric: the API server, the node agent, the lab and the CLI.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// subcommands are added by the files of this package, one file per command group.
var subcommands []func() *cobra.Command

func register(newCmd func() *cobra.Command) { subcommands = append(subcommands, newCmd) }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "vxfab",
		Short:         "vxfabric: a VXLAN overlay network fabric",
		Long:          "vxfabric gives tenants isolated L2 networks (VXLAN) spanning many Linux hosts.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	addClientFlags(root.PersistentFlags())
	for _, newCmd := range subcommands {
		root.AddCommand(newCmd())
	}
	refuseUnknownSubcommands(root)
	return root
}

// refuseUnknownSubcommands makes a command group given an unknown word fail (exit 1) instead of
// printing its help and succeeding, so that a typo in a script is noticed.
func refuseUnknownSubcommands(cmd *cobra.Command) {
	for _, c := range cmd.Commands() {
		refuseUnknownSubcommands(c)
	}
	if !cmd.HasSubCommands() || cmd.Runnable() {
		return
	}
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return fmt.Errorf("unknown command %q for %q (see %s --help)", args[0], cmd.CommandPath(), cmd.CommandPath())
		}
		return cmd.Help()
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vxfab: "+errorLine(err))
		var exit exitCodeError
		if errors.As(err, &exit) {
			os.Exit(exit.code)
		}
		os.Exit(1)
	}
}

// exitCodeError carries a specific exit status (for example a command run by `lab exec`).
type exitCodeError struct {
	code int
	err  error
}

func (e exitCodeError) Error() string { return e.err.Error() }
func (e exitCodeError) Unwrap() error { return e.err }
