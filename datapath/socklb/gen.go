package socklb

// The programs (bpf/socklb.c) compiled by clang into socklb_bpfel.o and
// wrapped by bpf2go into socklb_bpfel.go; both are committed. `make
// generate` rebuilds them (clang, llvm and libbpf-dev required); `make
// check-generate`, part of `make test`, fails when they are stale.
//
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -I/usr/include/x86_64-linux-gnu" -target bpfel -no-global-types socklb bpf/socklb.c
