//! Kernel receive timestamps for the latency client's sockets (`SO_TIMESTAMPNS`): the kernel
//! stamps each datagram when it is queued on the socket, so a response's latency does not include
//! the time the client itself waited for CPU 0 before reading it. Only the server's side (and the
//! loopback path) is measured. This is the bench's only `unsafe` code: one `setsockopt` and one
//! `recvmsg` with a control buffer, read through libc's `CMSG_*` helpers.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{SystemTime, UNIX_EPOCH};

/// Asks the kernel to stamp every datagram received on `socket`.
pub(crate) fn enable(socket: &UdpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` outlives the call and its size is passed along.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Now on the clock the kernel stamps with (`CLOCK_REALTIME`), in ns since the epoch.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Control buffer: room for one `timespec` message, 8-byte aligned as `cmsghdr` needs.
#[repr(C, align(8))]
struct Control([u8; 64]);

/// Receives one datagram into `buf` without blocking (the socket is non-blocking): its length
/// and the kernel's receive stamp in ns since the epoch (`None` if the kernel gave none).
pub(crate) fn recv(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut control = Control([0; 64]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iovecs); the pointers set below point to
    // `iov`, `buf` and `control`, which outlive the call, with their true lengths.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len();
    // SAFETY: see above; the kernel writes at most the given lengths.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &raw mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, stamp(&msg)))
}

/// The `SCM_TIMESTAMPNS` message of a received `msg`, in ns since the epoch.
fn stamp(msg: &libc::msghdr) -> Option<u64> {
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR/CMSG_NXTHDR stay within
    // msg_control/msg_controllen and return null at the end, and a message of type
    // SCM_TIMESTAMPNS carries one `timespec` (read unaligned, as CMSG_DATA does not promise
    // alignment).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts = libc::CMSG_DATA(cmsg)
                    .cast::<libc::timespec>()
                    .read_unaligned();
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}
