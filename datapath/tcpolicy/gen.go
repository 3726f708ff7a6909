package tcpolicy

// The policy programs (bpf/policy.c) compiled by clang into policy_bpfel.o
// and wrapped by bpf2go into policy_bpfel.go; both are committed, like the
// socket load balancer's (see datapath/socklb/gen.go). `make generate`
// rebuilds them; `make check-generate` fails when they are stale.
//
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -I/usr/include/x86_64-linux-gnu" -target bpfel -no-global-types policy bpf/policy.c
