package meshapiserver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/wire"
)

// Etcd users and roles. A client certificate's common name is its user.
const (
	rootUser   = "root" // etcd requires it before auth can be enabled
	rootRole   = "root"
	remoteRole = "remote"
	// cacheReaderRole is the cluster's own agents' read access to what a
	// kvstoremesh cache (package kvstoremesh) writes in this store: the
	// remotes' cached entries, their cluster configs and synced canaries.
	// Peers never get it: the cache holds other clusters' state.
	cacheReaderRole = "cache-reader"
	// localViewRole is the cluster's own agents' read access to the local
	// view (wire.LocalViewPrefix: every endpoint and identity, also those
	// a scoped export mode holds back from peers). Only remote-<cluster>
	// has it; it is revoked from any other user.
	localViewRole = "local-view-reader"
)

// AdminUser is the user the apiserver of cluster writes with.
func AdminUser(cluster string) string { return "admin-" + cluster }

// RemoteUser is the read-only user of peer cluster.
func RemoteUser(peer string) string { return "remote-" + peer }

// CiliumRemoteUser is the one read-only user every Cilium agent of every
// peer logs in as (pkg/kvstore/etcdinit/init.go: username("remote")). It
// exists only with Config.CiliumRemoteUser: a certificate named remote
// reads as any peer, so per-peer users are the default.
const CiliumRemoteUser = "remote"

// remotePermissions are what the remote role may read in cluster's store:
// the heartbeat, all state, and only cluster's own config and canaries.
// The heartbeat is granted as a prefix range (cilium/.heartbeat up to
// cilium/.heartbeau), as Cilium's etcdinit does (rangesForRemoteRole in
// pkg/kvstore/etcdinit/init.go, rangeForPrefix withoutTrailingSlash):
// Cilium's remote-cluster client lists the heartbeat as a prefix, and a
// single-key grant refuses that list.
func remotePermissions(cluster string) [][2]string {
	return [][2]string{
		{wire.HeartbeatKey, clientv3.GetPrefixRangeEnd(wire.HeartbeatKey)},
		{wire.StatePrefix, clientv3.GetPrefixRangeEnd(wire.StatePrefix)},
		{wire.ClusterConfigKey(cluster), ""},
		{wire.SyncedClusterPrefix(cluster), clientv3.GetPrefixRangeEnd(wire.SyncedClusterPrefix(cluster))},
	}
}

// cacheReaderPermissions are what the cache-reader role may read:
// cilium/cache/ (entries and the cache's per-remote status), every
// cluster config and every synced canary.
func cacheReaderPermissions() [][2]string {
	return [][2]string{
		{"cilium/cache/", clientv3.GetPrefixRangeEnd("cilium/cache/")},
		{wire.ClusterConfigPrefix, clientv3.GetPrefixRangeEnd(wire.ClusterConfigPrefix)},
		{wire.SyncedPrefix, clientv3.GetPrefixRangeEnd(wire.SyncedPrefix)},
	}
}

// localViewPermissions are what the local-view-reader role may read: the
// local view (entries and canaries).
func localViewPermissions() [][2]string {
	return [][2]string{{wire.LocalViewPrefix, clientv3.GetPrefixRangeEnd(wire.LocalViewPrefix)}}
}

// addReadRole creates role (if it is not there) with read access to
// perms.
func addReadRole(ctx context.Context, cli *clientv3.Client, role string, perms [][2]string) error {
	if _, err := cli.RoleAdd(ctx, role); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("adding role %s: %w", role, err)
	}
	for _, p := range perms {
		if _, err := cli.RoleGrantPermission(ctx, role, p[0], p[1], clientv3.PermissionType(clientv3.PermRead)); err != nil {
			return fmt.Errorf("granting %s read on %q: %w", role, p[0], err)
		}
	}
	return nil
}

// setupAuth creates the roles and users and enables authentication. It is
// idempotent, also on a store where auth is already on (as admin it may
// still manage users), and removes remote users of peers no longer listed,
// and the shared user remote unless ciliumRemote asks for it. Only the
// cluster's own user reads the local view.
func setupAuth(ctx context.Context, cli *clientv3.Client, cluster string, peers []string, ciliumRemote bool) error {
	for role, perms := range map[string][][2]string{
		remoteRole: remotePermissions(cluster), cacheReaderRole: cacheReaderPermissions(), localViewRole: localViewPermissions(),
	} {
		if err := addReadRole(ctx, cli, role, perms); err != nil {
			return err
		}
	}
	// The cluster's own agents read it as remote-<cluster> (for the
	// identities of their own pods), with the same read-only role.
	want := map[string]string{rootUser: rootRole, AdminUser(cluster): rootRole, RemoteUser(cluster): remoteRole}
	for _, p := range peers {
		want[RemoteUser(p)] = remoteRole
	}
	if ciliumRemote {
		want[CiliumRemoteUser] = remoteRole
	}
	for user, role := range want {
		_, err := cli.UserAddWithOptions(ctx, user, "", &clientv3.UserAddOptions{NoPassword: true})
		if err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
			return fmt.Errorf("adding user %s: %w", user, err)
		}
		if _, err := cli.UserGrantRole(ctx, user, role); err != nil {
			return fmt.Errorf("granting %s to %s: %w", role, user, err)
		}
	}
	// ...and read the remotes a kvstoremesh cache keeps here, and the
	// local view; no other user reads the local view.
	for _, role := range []string{cacheReaderRole, localViewRole} {
		if _, err := cli.UserGrantRole(ctx, RemoteUser(cluster), role); err != nil {
			return fmt.Errorf("granting %s to %s: %w", role, RemoteUser(cluster), err)
		}
	}
	for user := range want {
		if user != RemoteUser(cluster) && user != rootUser && user != AdminUser(cluster) {
			if err := revokeRole(ctx, cli, user, localViewRole); err != nil {
				return err
			}
		}
	}
	users, err := cli.UserList(ctx)
	if err != nil {
		return fmt.Errorf("listing users: %w", err)
	}
	for _, u := range users.Users {
		if _, ok := want[u]; !ok && (strings.HasPrefix(u, "remote-") || u == CiliumRemoteUser) {
			if _, err := cli.UserDelete(ctx, u); err != nil {
				return fmt.Errorf("removing user %s of a former peer: %w", u, err)
			}
		}
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		return fmt.Errorf("enabling auth: %w", err)
	}
	return nil
}

// revokeRole takes role from user if user has it.
func revokeRole(ctx context.Context, cli *clientv3.Client, user, role string) error {
	resp, err := cli.UserGet(ctx, user)
	if err != nil {
		return fmt.Errorf("reading the roles of %s: %w", user, err)
	}
	if !slices.Contains(resp.Roles, role) {
		return nil
	}
	if _, err := cli.UserRevokeRole(ctx, user, role); err != nil {
		return fmt.Errorf("revoking %s from %s: %w", role, user, err)
	}
	return nil
}
