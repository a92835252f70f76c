# virt-ebpf shims: one request to the broker (src/broker/protocol.ts, version 1) and its reply
# with the fds that came with it. Shared by wrapper.py and hook.py (on the path of every
# `virsh start`). Start-up time matters: `json` and `socket` would pull in re, enum and selectors
# (~9 ms); their C halves (_json, _socket) have everything used here.
import _json
import _socket
import os
import sys

SOCKET = os.environ.get('VIRT_EBPF_BROKER_SOCKET', '/run/virt-ebpf/broker.sock')
REMEDY = 'start it (systemctl start virt-ebpfd.socket, or `virt-ebpf broker` as root) and check `virt-ebpf doctor`'


def dumps(v):
    """JSON for our requests and state files: dicts, lists, strings, ints, booleans."""
    if isinstance(v, bool):  # before int: bool is an int in Python
        return 'true' if v else 'false'
    if isinstance(v, str):
        return _json.encode_basestring_ascii(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return '[' + ','.join(map(dumps, v)) + ']'
    return '{' + ','.join(dumps(k) + ':' + dumps(x) for k, x in v.items()) + '}'


class _Decoding:
    """The settings json.JSONDecoder hands to _json's scanner (plain JSON, strict)."""
    strict = True
    object_hook = object_pairs_hook = parse_constant = None
    parse_float = float
    parse_int = int


def loads(text):
    return _json.make_scanner(_Decoding())(text, 0)[0]


class Refused(Exception):
    """The broker could not be asked (`unreachable`) or said no; str() is the one-line message."""

    def __init__(self, message, unreachable=False):
        super().__init__(message)
        self.unreachable = unreachable


def call(request, timeout_s=10):
    """Send one request; returns (reply, fds) of a successful reply, else raises Refused."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    fds = []
    try:
        try:
            s.connect(SOCKET)
        except OSError as e:
            raise Refused('cannot reach the virt-ebpf broker at %s: %s (BROKER_UNREACHABLE); %s' % (SOCKET, e.strerror or e, REMEDY), True)
        s.sendall(dumps(request).encode() + b'\n')
        buf = b''
        while b'\n' not in buf:
            try:
                data, anc, _, _ = s.recvmsg(1 << 20, _socket.CMSG_SPACE(253 * 4))
            except TimeoutError:
                raise Refused('cannot reach the virt-ebpf broker at %s: no reply within %d ms (BROKER_UNREACHABLE); %s' % (SOCKET, timeout_s * 1000, REMEDY), True)
            for level, kind, cdata in anc:  # SCM_RIGHTS: an array of C ints
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                    fds += [int.from_bytes(cdata[i:i + 4], sys.byteorder, signed=True) for i in range(0, len(cdata) - 3, 4)]
            if not data:
                raise Refused('cannot reach the virt-ebpf broker at %s: the broker closed the connection without a reply (BROKER_UNREACHABLE); %s' % (SOCKET, REMEDY), True)
            buf += data
        reply = loads(buf[:buf.index(b'\n')].decode())
        if not reply.get('ok'):
            err = reply.get('error', {})
            raise Refused('broker: %s (%s); %s' % (err.get('message'), err.get('code'), err.get('remedy')))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        s.close()
    return reply, fds
