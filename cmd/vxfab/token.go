package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

func init() { register(newTokenCmd) }

func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "manage tenant API tokens (admin only)"}
	var tenant string
	create := &cobra.Command{
		Use:   "create --tenant T",
		Short: "create a token for a tenant; its secret is shown only now",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := vxfabricv1.NewTokenServiceClient(conn).CreateToken(ctx, &vxfabricv1.CreateTokenRequest{Tenant: tenant})
				if err != nil {
					return err
				}
				return render(cmd, resp, func(w io.Writer) {
					row(w, "ID", "TENANT", "CREATED")
					tokenRow(w, resp.GetToken())
					fmt.Fprintln(w)
					fmt.Fprintln(w, "secret (shown only once; use it as --token or VXFAB_TOKEN):")
					fmt.Fprintln(w, resp.GetSecret())
				})
			})
		},
	}
	create.Flags().StringVar(&tenant, "tenant", "", "tenant the token acts for")
	_ = create.MarkFlagRequired("tenant")

	var listTenant string
	list := &cobra.Command{
		Use:   "list [--tenant T]",
		Short: "list tokens (ids, never secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := vxfabricv1.NewTokenServiceClient(conn).ListTokens(ctx, &vxfabricv1.ListTokensRequest{Tenant: listTenant})
				if err != nil {
					return err
				}
				return render(cmd, resp, func(w io.Writer) {
					row(w, "ID", "TENANT", "CREATED")
					for _, t := range resp.GetTokens() {
						tokenRow(w, t)
					}
				})
			})
		},
	}
	list.Flags().StringVar(&listTenant, "tenant", "", "only this tenant's tokens")

	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "revoke a token: every server refuses it within a second",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return apiCall(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				if _, err := vxfabricv1.NewTokenServiceClient(conn).RevokeToken(ctx, &vxfabricv1.RevokeTokenRequest{Id: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "token %s revoked\n", args[0])
				return nil
			})
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

func tokenRow(w io.Writer, t *vxfabricv1.Token) {
	row(w, t.GetId(), t.GetTenant(), fmtTime(t.GetCreateTime()))
}
