package auth

import (
	"context"
	"errors"
	"log/slog"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	vxfabricv1 "github.com/vxfabric/vxfabric/proto/vxfabric/v1"
)

// tokenService implements vxfabric.v1.TokenService. The interceptors let only admins reach it.
type tokenService struct {
	vxfabricv1.UnimplementedTokenServiceServer
	tokens *tokenStore
	log    *slog.Logger
}

func toProto(r tokenRecord) *vxfabricv1.Token {
	return &vxfabricv1.Token{Id: r.ID, Tenant: r.Tenant, CreateTime: timestamppb.New(r.Create)}
}

// validName is the API's rule for tenant names: 1-63 of [a-z0-9-], starting with a letter.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func validTokenID(s string) bool {
	if len(s) != tokenIDLen {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func (s *tokenService) CreateToken(ctx context.Context, req *vxfabricv1.CreateTokenRequest) (*vxfabricv1.CreateTokenResponse, error) {
	if req.GetTenant() == "" {
		return nil, status.Error(codes.InvalidArgument, "tenant is required")
	}
	if !validName(req.GetTenant()) {
		return nil, status.Errorf(codes.InvalidArgument, "tenant %s: want 1-63 of [a-z0-9-] starting with a letter", vxfabricv1.Quote(req.GetTenant()))
	}
	rec, secret, err := s.tokens.create(ctx, req.GetTenant())
	if err != nil {
		return nil, s.statusOf(err)
	}
	s.log.Info("token created", "tenant", rec.Tenant, "token", rec.ID)
	return &vxfabricv1.CreateTokenResponse{Token: toProto(rec), Secret: secret}, nil
}

func (s *tokenService) ListTokens(ctx context.Context, req *vxfabricv1.ListTokensRequest) (*vxfabricv1.ListTokensResponse, error) {
	if t := req.GetTenant(); t != "" && !validName(t) {
		return nil, status.Errorf(codes.InvalidArgument, "tenant %s: want 1-63 of [a-z0-9-] starting with a letter", vxfabricv1.Quote(t))
	}
	recs, err := s.tokens.list(ctx, req.GetTenant())
	if err != nil {
		return nil, s.statusOf(err)
	}
	resp := &vxfabricv1.ListTokensResponse{Tokens: make([]*vxfabricv1.Token, 0, len(recs))}
	for _, r := range recs {
		resp.Tokens = append(resp.Tokens, toProto(r))
	}
	return resp, nil
}

func (s *tokenService) RevokeToken(ctx context.Context, req *vxfabricv1.RevokeTokenRequest) (*vxfabricv1.RevokeTokenResponse, error) {
	if !validTokenID(req.GetId()) {
		return nil, status.Errorf(codes.InvalidArgument, "token id %s: want %d lowercase hex characters", vxfabricv1.Quote(req.GetId()), tokenIDLen)
	}
	if err := s.tokens.revoke(ctx, req.GetId()); err != nil {
		return nil, s.statusOf(err)
	}
	s.log.Info("token revoked", "token", req.GetId())
	return &vxfabricv1.RevokeTokenResponse{}, nil
}

// statusOf maps this package's errors to gRPC codes, in one place.
func (s *tokenService) statusOf(err error) error {
	switch {
	case errors.Is(err, errNoSuchTenant):
		// The code says "not found": the message names what ("tenant \"x\""), as the API's do.
		return status.Error(codes.NotFound, strings.TrimSuffix(err.Error(), ": "+errNoSuchTenant.Error()))
	case errors.Is(err, errNoSuchToken):
		return status.Error(codes.NotFound, strings.TrimSuffix(err.Error(), ": "+errNoSuchToken.Error()))
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	s.log.Error("token store failed", "err", err)
	return status.Error(codes.Unavailable, "token store unavailable")
}
