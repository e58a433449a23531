//! Batched UDP I/O with `recvmmsg(2)` / `sendmmsg(2)`: one system call for up to [`SLOTS`]
//! datagrams in each direction.
//!
//! At 150k queries per second a core spends most of its time in the two system calls per query
//! that `recv_from`/`send_to` cost; batching amortises them (NSD and Knot do the same). The
//! receive call uses `MSG_WAITFORONE`, so a batch never waits for more traffic than is already
//! queued: latency at low load is unchanged. This is the only module with `unsafe` code; each
//! block states why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::mem::{MaybeUninit, size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per batch.
pub const SLOTS: usize = 32;
/// Receive buffer per datagram; larger queries are truncated (and then rejected as malformed).
pub const SLOT_BYTES: usize = 4096;

/// Buffers for one batch, reused across calls.
pub struct Batch {
    data: Vec<u8>,
    lens: [usize; SLOTS],
    truncated: [bool; SLOTS],
    names: [libc::sockaddr_storage; SLOTS],
    name_lens: [libc::socklen_t; SLOTS],
    count: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            data: vec![0; SLOTS * SLOT_BYTES],
            lens: [0; SLOTS],
            truncated: [false; SLOTS],
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
            names: unsafe { zeroed() },
            name_lens: [0; SLOTS],
            count: 0,
        }
    }
}

impl Batch {
    /// Receives at least one datagram (blocking up to the socket's read timeout).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iovs: [MaybeUninit<libc::iovec>; SLOTS] = [MaybeUninit::uninit(); SLOTS];
        // SAFETY: mmsghdr is plain old data; zero is a valid starting value for every field.
        let mut hdrs: [libc::mmsghdr; SLOTS] = unsafe { zeroed() };
        let base = self.data.as_mut_ptr();
        for i in 0..SLOTS {
            // SAFETY: slot i lies inside `data` (SLOTS * SLOT_BYTES long).
            let ptr = unsafe { base.add(i * SLOT_BYTES) };
            iovs[i].write(libc::iovec {
                iov_base: ptr.cast(),
                iov_len: SLOT_BYTES,
            });
            self.name_lens[i] = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            hdrs[i].msg_hdr.msg_namelen = self.name_lens[i];
            hdrs[i].msg_hdr.msg_iov = iovs[i].as_mut_ptr();
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at buffers owned by `self` or this stack frame, all of
        // which outlive the call; the kernel writes at most iov_len / msg_namelen bytes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                SLOTS as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        self.count = n as usize;
        for (i, hdr) in hdrs.iter().enumerate().take(self.count) {
            self.lens[i] = (hdr.msg_len as usize).min(SLOT_BYTES);
            self.truncated[i] = hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.name_lens[i] = hdr.msg_hdr.msg_namelen;
        }
        Ok(self.count)
    }

    /// Datagram `i` of the last receive; None if it did not fit a slot.
    pub fn packet(&self, i: usize) -> Option<&[u8]> {
        if i >= self.count || self.truncated[i] {
            return None;
        }
        Some(&self.data[i * SLOT_BYTES..i * SLOT_BYTES + self.lens[i]])
    }

    /// The sender of datagram `i`.
    pub fn peer(&self, i: usize) -> Option<SocketAddr> {
        if i >= self.count {
            return None;
        }
        sockaddr_to_std(&self.names[i])
    }

    /// Sends `replies` (slot of the query it answers, bytes) back to their senders.
    pub fn send(&mut self, fd: RawFd, replies: &[(usize, &[u8])]) {
        let mut iovs: [MaybeUninit<libc::iovec>; SLOTS] = [MaybeUninit::uninit(); SLOTS];
        // SAFETY: as in `recv`.
        let mut hdrs: [libc::mmsghdr; SLOTS] = unsafe { zeroed() };
        let count = replies.len().min(SLOTS);
        for (k, (slot, bytes)) in replies.iter().take(count).enumerate() {
            iovs[k].write(libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            });
            hdrs[k].msg_hdr.msg_name =
                (&mut self.names[*slot] as *mut libc::sockaddr_storage).cast();
            hdrs[k].msg_hdr.msg_namelen = self.name_lens[*slot];
            hdrs[k].msg_hdr.msg_iov = iovs[k].as_mut_ptr();
            hdrs[k].msg_hdr.msg_iovlen = 1;
        }
        let mut sent = 0;
        while sent < count {
            // SAFETY: headers [sent, count) point at `replies`' bytes (borrowed for this call)
            // and at `self.names`; the kernel only reads them.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs.as_mut_ptr().add(sent),
                    (count - sent) as libc::c_uint,
                    0,
                )
            };
            if n <= 0 {
                // Skip the datagram the kernel refused (e.g. an unreachable peer) and go on.
                sent += 1;
            } else {
                sent += n as usize;
            }
        }
    }
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large
            // enough and suitably aligned for.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
