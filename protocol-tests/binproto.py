"""Tiny packer/unpacker for the memcached binary protocol (24-byte header).

Request header (big-endian):
    magic 0x80 | opcode | keylen u16 | extlen u8 | datatype u8 | vbucket u16 |
    bodylen u32 | opaque u32 | cas u64
Response header: same layout, magic 0x81 and `status` u16 in place of vbucket.
Body order: extras, key, value.

Works with ``conftest.Conn`` (uses only ``send`` and ``read_exact``).
"""
import struct

HEADER = struct.Struct(">BBHBBHIIQ")
HEADER_LEN = 24
REQ_MAGIC = 0x80
RES_MAGIC = 0x81

# Opcodes
GET = 0x00
SET = 0x01
ADD = 0x02
REPLACE = 0x03
DELETE = 0x04
INCREMENT = 0x05
DECREMENT = 0x06
QUIT = 0x07
FLUSH = 0x08
GETQ = 0x09
NOOP = 0x0A
VERSION = 0x0B
GETK = 0x0C
GETKQ = 0x0D
APPEND = 0x0E
PREPEND = 0x0F
STAT = 0x10
SETQ = 0x11
ADDQ = 0x12
REPLACEQ = 0x13
DELETEQ = 0x14
INCREMENTQ = 0x15
DECREMENTQ = 0x16
QUITQ = 0x17
FLUSHQ = 0x18
APPENDQ = 0x19
PREPENDQ = 0x1A
VERBOSITY = 0x1B
TOUCH = 0x1C
GAT = 0x1D
GATQ = 0x1E
SASL_LIST_MECHS = 0x20
SASL_AUTH = 0x21
SASL_STEP = 0x22
GATK = 0x23
GATKQ = 0x24
RGET = 0x30

# Status codes
SUCCESS = 0x0000
KEY_ENOENT = 0x0001
KEY_EEXISTS = 0x0002
E2BIG = 0x0003
EINVAL = 0x0004
NOT_STORED = 0x0005
DELTA_BADVAL = 0x0006
AUTH_ERROR = 0x0020
AUTH_CONTINUE = 0x0021
UNKNOWN_COMMAND = 0x0081
ENOMEM = 0x0082


def header(opcode, keylen=0, extlen=0, bodylen=0, opaque=0, cas=0,
           magic=REQ_MAGIC, datatype=0, vbucket=0):
    """Raw 24-byte header with arbitrary (possibly inconsistent) lengths."""
    return HEADER.pack(magic, opcode, keylen, extlen, datatype, vbucket,
                       bodylen, opaque, cas)


def req(opcode, key=b"", extras=b"", value=b"", cas=0, opaque=0):
    """A well-formed request packet."""
    if isinstance(key, str):
        key = key.encode()
    if isinstance(value, str):
        value = value.encode()
    body = extras + key + value
    return header(opcode, len(key), len(extras), len(body), opaque, cas) + body


def store_extras(flags=0, exptime=0):
    """SET/ADD/REPLACE extras: flags u32, exptime u32."""
    return struct.pack(">II", flags, exptime)


def delta_extras(delta=1, initial=0, exptime=0):
    """INCREMENT/DECREMENT extras: delta u64, initial u64, exptime u32."""
    return struct.pack(">QQI", delta, initial, exptime)


def exptime_extras(exptime=0):
    """TOUCH/GAT/FLUSH extras: exptime u32."""
    return struct.pack(">I", exptime)


def flags_of(extras):
    return struct.unpack(">I", extras)[0]


def u64(value):
    return struct.unpack(">Q", value)[0]


class Packet(tuple):
    """(opcode, status, extras, key, value, cas, opaque) with attribute access."""
    __slots__ = ()
    _fields = ("opcode", "status", "extras", "key", "value", "cas", "opaque")

    def __new__(cls, opcode, status, extras, key, value, cas, opaque, datatype=0):
        return tuple.__new__(cls, (opcode, status, extras, key, value, cas, opaque))

    opcode = property(lambda self: self[0])
    status = property(lambda self: self[1])
    extras = property(lambda self: self[2])
    key = property(lambda self: self[3])
    value = property(lambda self: self[4])
    cas = property(lambda self: self[5])
    opaque = property(lambda self: self[6])

    def __repr__(self):
        return ("Packet(opcode=0x%02x, status=0x%04x, extras=%r, key=%r, value=%r, cas=%d, opaque=0x%x)"
                % tuple(self))


def parse_header(hdr):
    magic, opcode, keylen, extlen, datatype, status, bodylen, opaque, cas = HEADER.unpack(hdr)
    return magic, opcode, keylen, extlen, datatype, status, bodylen, opaque, cas


def read_packet(conn, timeout=None):
    """Read one response packet; returns a Packet
    (opcode, status, extras, key, value, cas, opaque)."""
    hdr = conn.read_exact(HEADER_LEN, timeout)
    magic, opcode, keylen, extlen, datatype, status, bodylen, opaque, cas = parse_header(hdr)
    assert magic == RES_MAGIC, "bad response magic 0x%02x in %r" % (magic, hdr)
    assert datatype == 0, "non-zero datatype %d" % datatype
    assert extlen + keylen <= bodylen, "inconsistent response header %r" % hdr
    body = conn.read_exact(bodylen, timeout) if bodylen else b""
    extras = body[:extlen]
    key = body[extlen:extlen + keylen]
    value = body[extlen + keylen:]
    return Packet(opcode, status, extras, key, value, cas, opaque)


def call(conn, opcode, key=b"", extras=b"", value=b"", cas=0, opaque=0):
    """Send one request and read one response packet."""
    conn.send(req(opcode, key, extras, value, cas, opaque))
    return read_packet(conn)


def res(opcode, status=SUCCESS, extras=b"", key=b"", value=b"", cas=0, opaque=0):
    """Raw bytes of a response packet (for byte-exact comparisons)."""
    body = extras + key + value
    return HEADER.pack(RES_MAGIC, opcode, len(key), len(extras), 0, status,
                       len(body), opaque, cas) + body
