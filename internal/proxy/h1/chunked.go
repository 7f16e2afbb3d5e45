package h1

import "bytes"

// maxChunkLine bounds a chunk-size line, extensions included.
const maxChunkLine = 1 << 10

type chunkState uint8

const (
	chunkSize chunkState = iota
	chunkData
	chunkDataEnd // the CRLF after a chunk's data
	chunkTrailers
	chunkDone
)

// Chunks decodes a chunked body (RFC 9112 7.1) as its bytes arrive; its
// zero value is ready for a body's first chunk. One goroutine uses it at a
// time.
type Chunks struct {
	// Limits bound the trailer section as they bound a head.
	Limits Limits
	// Trailers are the trailer fields, set once Next reports the end;
	// they point into the buffer of that last call.
	Trailers []Field

	state chunkState
	left  int64 // data bytes of the current chunk still to come
}

// Next decodes what it can from buf, the body's bytes not consumed yet. It
// returns the chunk data at the front of buf (a slice of it, possibly
// empty), the bytes of buf it used (data included), and done once the last
// chunk and the trailers have been read. Used nothing, no data and not
// done means it needs more bytes after buf[n:]. An *Error (status 400)
// says the framing is malformed; the connection must not be read further.
func (c *Chunks) Next(buf []byte) (data []byte, n int, done bool, err error) {
	for {
		switch c.state {
		case chunkDone:
			return nil, n, true, nil
		case chunkData:
			take := int(min(c.left, int64(len(buf)-n)))
			if take == 0 {
				return nil, n, false, nil
			}
			if c.left -= int64(take); c.left == 0 {
				c.state = chunkDataEnd
			}
			return buf[n : n+take], n + take, false, nil
		case chunkDataEnd:
			if len(buf)-n < 2 {
				return nil, n, false, nil
			}
			if buf[n] != '\r' || buf[n+1] != '\n' {
				return nil, n, false, refuseStrict(400, "chunk data is not followed by CRLF")
			}
			n += 2
			c.state = chunkSize
		case chunkSize:
			used, err := c.sizeLine(buf[n:])
			if used == 0 || err != nil {
				return nil, n, false, nilIfNone(err)
			}
			n += used
		case chunkTrailers:
			p := headParser{buf: buf[n:], limit: c.Limits.maxHead()}
			fields, ok, err := p.fields(c.Trailers[:0], c.Limits.maxFields())
			if !ok {
				if err != nil {
					err.Status = 400
				}
				return nil, n, false, nilIfNone(err)
			}
			c.Trailers = fields
			c.state = chunkDone
			return nil, n + p.pos, true, nil
		}
	}
}

// sizeLine parses a chunk-size line at the front of b: 1 to 15 hex digits
// and optional extensions (ignored). It returns the bytes used, 0 when b
// does not hold the whole line.
func (c *Chunks) sizeLine(b []byte) (int, *Error) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		if len(b) > maxChunkLine {
			return 0, refuseStrict(400, "a chunk-size line is over 1 KiB")
		}
		return 0, nil
	}
	if i == 0 || b[i-1] != '\r' {
		return 0, refuseStrict(400, "a chunk-size line ends in a bare LF")
	}
	line := b[:i-1]
	size := line
	if semi := bytes.IndexByte(line, ';'); semi >= 0 {
		size = line[:semi]
		for _, ch := range line[semi:] {
			if !isFieldValueByte(ch) {
				return 0, refuseStrict(400, "a chunk extension has a control character")
			}
		}
	}
	if len(size) == 0 || len(size) > 15 {
		return 0, refuseStrict(400, "invalid chunk size "+quote(size))
	}
	var n int64
	for _, ch := range size {
		var d byte
		switch {
		case isDigit(ch):
			d = ch - '0'
		case 'a' <= ch && ch <= 'f':
			d = ch - 'a' + 10
		case 'A' <= ch && ch <= 'F':
			d = ch - 'A' + 10
		default:
			return 0, refuseStrict(400, "invalid chunk size "+quote(size))
		}
		n = n<<4 | int64(d)
	}
	if n == 0 {
		c.state = chunkTrailers
	} else {
		c.state, c.left = chunkData, n
	}
	return i + 1, nil
}
