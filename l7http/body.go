package l7http

import (
	"bufio"
	"errors"
	"io"
	"strconv"
)

// Bodies are streamed: what src has buffered is written to dst, and dst is
// flushed before every read that would block, so a slow or streaming body
// (server-sent events, a long upload) moves as it comes and no body is ever
// held whole.

// maxChunkLine bounds a chunk size line with its extensions.
const maxChunkLine = 4096

// copyN copies exactly n bytes of src to dst.
func copyN(dst *bufio.Writer, src *bufio.Reader, n int64) error {
	for n > 0 {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return err
			}
			if _, err := src.Peek(1); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
		}
		k := min(int64(src.Buffered()), n)
		b, _ := src.Peek(int(k))
		if _, err := dst.Write(b); err != nil {
			return err
		}
		src.Discard(int(k))
		n -= k
	}
	return nil
}

// copyUntilEOF copies src to dst until src ends (a response delimited by
// the server closing).
func copyUntilEOF(dst *bufio.Writer, src *bufio.Reader) error {
	for {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return err
			}
			if _, err := src.Peek(1); err != nil {
				if err == io.EOF {
					return nil
				}
				return err
			}
		}
		b, _ := src.Peek(src.Buffered())
		if _, err := dst.Write(b); err != nil {
			return err
		}
		src.Discard(len(b))
	}
}

// copyChunked decodes a chunked body from src and writes it re-encoded to
// dst: chunk extensions dropped, sizes in canonical hex, trailer fields
// validated as header fields (within maxTrailer bytes) and kept. Nothing
// of an invalid chunk is written.
func copyChunked(dst *bufio.Writer, src *bufio.Reader, maxTrailer int, scratch *[]byte) error {
	var sizeBuf [20]byte
	for {
		if src.Buffered() == 0 { // what is written moves on before waiting for more
			if err := dst.Flush(); err != nil {
				return err
			}
		}
		l := lineReader{br: src, budget: maxChunkLine, scratch: *scratch}
		line, err := l.line()
		*scratch = l.scratch
		if err != nil {
			return chunkErr(err)
		}
		size, err := parseChunkSize(line)
		if err != nil {
			return err
		}
		if size == 0 {
			return copyTrailer(dst, src, maxTrailer, scratch)
		}
		dst.Write(strconv.AppendUint(sizeBuf[:0], size, 16))
		dst.WriteString("\r\n")
		if err := copyN(dst, src, int64(size)); err != nil {
			return err
		}
		if err := expectCRLF(src); err != nil {
			return err
		}
		dst.WriteString("\r\n")
	}
}

func copyTrailer(dst *bufio.Writer, src *bufio.Reader, maxTrailer int, scratch *[]byte) error {
	l := lineReader{br: src, budget: maxTrailer, scratch: *scratch}
	trailer, err := l.readFields(nil)
	*scratch = l.scratch
	if err != nil {
		return chunkErr(err)
	}
	for _, h := range trailer {
		if isFramingField(h.name) {
			return refuse(ErrSmuggling, "trailer_framing", "a trailer field that frames the message")
		}
	}
	dst.WriteString("0\r\n")
	writeFields(dst, trailer)
	return nil
}

func isFramingField(name string) bool {
	for _, f := range []string{"Content-Length", "Transfer-Encoding", "Host", "Connection"} {
		if len(name) == len(f) && equalFoldASCII(name, f) {
			return true
		}
	}
	return false
}

func equalFoldASCII(a, b string) bool {
	for i := 0; i < len(a); i++ {
		x, y := a[i]|0x20, b[i]|0x20
		if x != y {
			return false
		}
	}
	return true
}

// chunkErr turns a line error of a chunked body into a chunk refusal
// (a bare LF, a line over its budget); I/O errors stay.
func chunkErr(err error) error {
	var r *refusal
	if errors.As(err, &r) && r.err != ErrSmuggling {
		return refuse(ErrChunk, "chunk_line", r.detail)
	}
	return err
}

func expectCRLF(src *bufio.Reader) error {
	b, err := src.Peek(2)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if len(b) == 0 || b[0] == '\r' {
			return err
		}
		return refuse(ErrChunk, "chunk_data_end", "chunk data not followed by CRLF")
	}
	if b[0] != '\r' || b[1] != '\n' {
		return refuse(ErrChunk, "chunk_data_end", "chunk data not followed by CRLF")
	}
	src.Discard(2)
	return nil
}

// parseChunkSize reads "1*HEXDIG *( BWS ; ext )": a size of at most 15 hex
// digits (no sign, prefix or leading whitespace); extensions are checked
// for control characters and dropped.
func parseChunkSize(line []byte) (uint64, error) {
	i := 0
	for i < len(line) && isHex(line[i]) {
		i++
	}
	if i == 0 || i > 15 {
		return 0, refuse(ErrChunk, "chunk_size", "chunk size is not 1 to 15 hex digits")
	}
	size, _ := strconv.ParseUint(string(line[:i]), 16, 64)
	rest := line[i:]
	for len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') {
		rest = rest[1:]
	}
	if len(rest) > 0 && (rest[0] != ';' || !validValue(rest)) {
		return 0, refuse(ErrChunk, "chunk_size", "chunk size followed by something other than an extension")
	}
	return size, nil
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// limitedWriter fails once more than n bytes were written (a denied
// request's body drained into io.Discard).
type limitedWriter struct{ n int64 }

func (l *limitedWriter) Write(p []byte) (int, error) {
	l.n -= int64(len(p))
	if l.n < 0 {
		return 0, errDrainLimit
	}
	return len(p), nil
}
