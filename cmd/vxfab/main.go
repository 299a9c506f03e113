// Command vxfab is the one binary of vxfabric: the API server, the node agent, the lab and the CLI.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
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
	root.SetFlagErrorFunc(flagError)
	addClientFlags(root.PersistentFlags())
	for _, newCmd := range subcommands {
		root.AddCommand(newCmd())
	}
	// Cobra adds its completion and help commands only when it runs: add them now, so that they
	// refuse an unknown word as every other command does.
	root.InitDefaultCompletionCmd()
	root.SetHelpCommand(newHelpCmd())
	refuseUnknownSubcommands(root)
	return root
}

// newHelpCmd is `vxfab help [COMMAND...]`: cobra's own help command prints the root's help and
// succeeds for a command that does not exist.
func newHelpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		ValidArgsFunction: func(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			target, _, err := c.Root().Find(args)
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var words []cobra.Completion
			for _, sub := range target.Commands() {
				if sub.IsAvailableCommand() && strings.HasPrefix(sub.Name(), toComplete) {
					words = append(words, cobra.CompletionWithDesc(sub.Name(), sub.Short))
				}
			}
			return words, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			root := cmd.Root()
			target, rest, err := root.Find(args)
			if err != nil || len(rest) > 0 {
				return fmt.Errorf("help: unknown command %q (see %s --help)", strings.Join(args, " "), root.CommandPath())
			}
			target.InitDefaultHelpFlag()
			return target.Help()
		},
	}
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
	os.Exit(report(err, os.Stderr))
}

// report prints a failed command's one error line on stderr and returns the exit status: 1, or the
// one an exitCodeError carries. A quiet exitCodeError prints nothing.
func report(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	code := 1
	var exit exitCodeError
	if errors.As(err, &exit) {
		if exit.quiet {
			return exit.code
		}
		code = exit.code
	}
	fmt.Fprintln(stderr, "vxfab: "+errorLine(err))
	return code
}

// exitCodeError carries a specific exit status (for example a command run by `lab exec`). quiet:
// the failure has been told already (the command run by `lab exec` said it on its own stderr), so
// vxfab adds no line of its own.
type exitCodeError struct {
	code  int
	err   error
	quiet bool
}

func (e exitCodeError) Error() string { return e.err.Error() }
func (e exitCodeError) Unwrap() error { return e.err }
