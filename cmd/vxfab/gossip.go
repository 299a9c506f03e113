package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

func init() { register(newGossipCmd) }

func newGossipCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "gossip", Short: "the gossip key: show it, rotate it (admin only)"}
	show := &cobra.Command{
		Use: "status", Short: "show the gossip keyring: its step, its keys by fingerprint, each node's progress", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := vxfabricv1.NewGossipServiceClient(conn).GetGossipKeyring(ctx, &vxfabricv1.GetGossipKeyringRequest{})
				if err != nil {
					return err
				}
				return render(cmd, resp, func(w io.Writer) { keyringTable(w, resp.GetKeyring()) })
			})
		},
	}
	var (
		stepTimeout time.Duration
		wait        bool
	)
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "replace the gossip key on every server and agent, with no file to edit",
		Long: "Replaces the key that encrypts gossip. Every server and agent first adds a new random key, then\n" +
			"encrypts with it, then drops the old one; each step starts once every ALIVE or SUSPECT node and\n" +
			"every server has confirmed the one before, or after --step-timeout. Agents receive the keys\n" +
			"through their Sync stream, which a revoked certificate no longer opens: after `vxfab certs\n" +
			"revoke`, a rotation shuts the revoked host out of gossip. Agents started with --gossip-keyring\n" +
			"keep the file current, and every agent remembers the servers (--state-dir), so a restart finds\n" +
			"its way back.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := dialServer()
			if err != nil {
				return err
			}
			defer conn.Close()
			client := vxfabricv1.NewGossipServiceClient(conn)
			ctx, cancel := callContext(cmd.Context())
			resp, err := client.RotateGossipKey(ctx, &vxfabricv1.RotateGossipKeyRequest{StepTimeoutMs: stepTimeout.Milliseconds()})
			cancel()
			if err != nil {
				return err
			}
			st := resp.GetKeyring()
			if wait {
				if st, err = waitRotation(cmd, client, st, 2*max(stepTimeout, 30*time.Second)+15*time.Second); err != nil {
					return err
				}
			}
			return render(cmd, &vxfabricv1.GetGossipKeyringResponse{Keyring: st}, func(w io.Writer) { keyringTable(w, st) })
		},
	}
	rotate.Flags().DurationVar(&stepTimeout, "step-timeout", 30*time.Second, "how long each step waits for ALIVE and SUSPECT nodes and servers to confirm it")
	rotate.Flags().BoolVar(&wait, "wait", true, "wait until the rotation is done, printing its steps (on stderr)")
	cmd.AddCommand(show, rotate)
	return cmd
}

// waitRotation follows a rotation until its step is DONE or within passes, telling each step on stderr.
func waitRotation(cmd *cobra.Command, client vxfabricv1.GossipServiceClient, st *vxfabricv1.GossipKeyringStatus, within time.Duration) (*vxfabricv1.GossipKeyringStatus, error) {
	began := time.Now()
	deadline := began.Add(within)
	step := vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_UNSPECIFIED
	for {
		if st.GetStep() != step {
			step = st.GetStep()
			fmt.Fprintf(cmd.ErrOrStderr(), "%6.1fs  step %s\n", time.Since(began).Seconds(), rotationStep(step))
		}
		if step == vxfabricv1.GossipRotationStep_GOSSIP_ROTATION_STEP_DONE {
			return st, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the rotation is still at step %s after %s; it goes on without this command (vxfab gossip status shows it)", rotationStep(step), within)
		}
		select {
		case <-cmd.Context().Done():
			return nil, cmd.Context().Err()
		case <-time.After(200 * time.Millisecond):
		}
		ctx, cancel := callContext(cmd.Context())
		resp, err := client.GetGossipKeyring(ctx, &vxfabricv1.GetGossipKeyringRequest{})
		cancel()
		switch {
		case status.Code(err) == codes.Unavailable:
			// The rotation goes on without this server (every replica moves it on): ask again.
			continue
		case err != nil:
			return nil, err
		}
		st = resp.GetKeyring()
	}
}

// laggingNow splits the members the rotation went on without into those still behind and the nodes
// that have confirmed the current keyring since (a host back after a revocation was lifted).
func laggingNow(st *vxfabricv1.GossipKeyringStatus) (behind, caughtUp []string) {
	current := map[string]bool{}
	for _, n := range st.GetNodes() {
		current[n.GetNode()] = n.GetKeyringRevision() >= st.GetRevision()
	}
	for _, name := range st.GetLaggingNodes() {
		if current[name] {
			caughtUp = append(caughtUp, name)
		} else {
			behind = append(behind, name)
		}
	}
	return behind, caughtUp
}

// revocationListText is a revocation list in a line: "CRL 2 of CA 41d68c96 (1 revoked)".
func revocationListText(l *vxfabricv1.RevocationList) string {
	ca := l.GetCa()
	if len(ca) > 8 {
		ca = ca[:8]
	}
	return fmt.Sprintf("CRL %s of CA %s (%d revoked)", l.GetCrlNumber(), ca, l.GetRevoked())
}

func rotationStep(s vxfabricv1.GossipRotationStep) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "GOSSIP_ROTATION_STEP_"))
}

func keyringTable(w io.Writer, st *vxfabricv1.GossipKeyringStatus) {
	step := rotationStep(st.GetStep())
	if !st.GetManaged() {
		step = "never rotated (each member uses the keys it was started with; these are this server's)"
	}
	row(w, "Step:", step)
	for i, id := range st.GetKeyIds() {
		role := "accepted"
		if i == 0 {
			role = "encrypts"
		}
		row(w, "Key:", id+" ("+role+")")
	}
	if st.GetManaged() {
		row(w, "Revision:", st.GetRevision())
		row(w, "Since:", fmtTime(st.GetStepTime()))
	}
	if behind, caughtUp := laggingNow(st); len(behind)+len(caughtUp) > 0 {
		text := "none now"
		if len(behind) > 0 {
			text = strings.Join(behind, ", ")
		}
		text += " (had not confirmed a step in time"
		if len(caughtUp) > 0 {
			text += "; " + strings.Join(caughtUp, ", ") + " current since"
		}
		row(w, "Left behind:", text+")")
	}
	if l := st.GetRevocationRotatedFor(); l != nil {
		row(w, "Revocations:", "last rotated for "+revocationListText(l))
	}
	for _, s := range st.GetServerRevocationLists() {
		row(w, "Server list:", s.GetServer()+" enforces "+revocationListText(s.GetList()))
	}
	fmt.Fprintln(w)
	row(w, "NODE", "STATUS", "KEYRING", "CURRENT")
	for _, n := range st.GetNodes() {
		current := "-"
		if st.GetManaged() {
			current = yesNo(n.GetKeyringRevision() >= st.GetRevision())
		}
		row(w, n.GetNode(), statusName(n.GetStatus()), revisionText(n.GetKeyringRevision()), current)
	}
}
