package l7proxy

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// sockopts is a net.ListenConfig / net.Dialer Control setting the options
// of a transparent socket: IP_TRANSPARENT (bind to, and receive for, an
// address that is not the node's), SO_REUSEADDR, a mark when not 0, and
// for datagram listeners IP_RECVORIGDSTADDR.
func sockopts(mark uint32, origDst bool) func(network, address string, c syscall.RawConn) error {
	return func(network, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			s := int(fd)
			set := func(level, opt, v int, name string) {
				if serr == nil {
					if err := unix.SetsockoptInt(s, level, opt, v); err != nil {
						serr = fmt.Errorf("setsockopt %s: %w", name, err)
					}
				}
			}
			set(unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, "SO_REUSEADDR")
			if mark != 0 {
				set(unix.SOL_SOCKET, unix.SO_MARK, int(mark), "SO_MARK")
			}
			if network[len(network)-1] == '6' {
				set(unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1, "IPV6_TRANSPARENT")
				if origDst {
					set(unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR, 1, "IPV6_RECVORIGDSTADDR")
				}
				return
			}
			set(unix.SOL_IP, unix.IP_TRANSPARENT, 1, "IP_TRANSPARENT")
			if origDst {
				set(unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1, "IP_RECVORIGDSTADDR")
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// parseOrigDst reads the original destination of a datagram from its
// control messages (IP_ORIGDSTADDR: a sockaddr_in; IPV6_ORIGDSTADDR: a
// sockaddr_in6).
func parseOrigDst(oob []byte) (netip.AddrPort, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: control messages: %w", ErrBadOrigDst, err)
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR:
			if len(m.Data) < unix.SizeofSockaddrInet4 {
				return netip.AddrPort{}, fmt.Errorf("%w: IP_ORIGDSTADDR of %d bytes", ErrBadOrigDst, len(m.Data))
			}
			port := binary.BigEndian.Uint16(m.Data[2:4])
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Data[4:8])), port), nil
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_ORIGDSTADDR:
			if len(m.Data) < unix.SizeofSockaddrInet6 {
				return netip.AddrPort{}, fmt.Errorf("%w: IPV6_ORIGDSTADDR of %d bytes", ErrBadOrigDst, len(m.Data))
			}
			port := binary.BigEndian.Uint16(m.Data[2:4])
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(m.Data[8:24])).Unmap(), port), nil
		}
	}
	return netip.AddrPort{}, fmt.Errorf("%w: no IP_ORIGDSTADDR message", ErrBadOrigDst)
}
