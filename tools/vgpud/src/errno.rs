//! The errno values vgpud gives back, in one place.
//!
//! An operation that fails says which errno the kernel would give for the same
//! mistake (docs/control.md); the control socket sends its name
//! (`{"ok":false,"error":"EEXIST",…}`), the mdev sysfs tree and the vfio-user
//! server its number. [`Errno`] is both: [`Errno::name`] and [`Errno::raw`]
//! (the `libc` value), and it serializes as its name.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! errnos {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// An errno vgpud gives back.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Errno {
            $($(#[$doc])* $name,)*
        }

        impl Errno {
            /// Every errno this enum has.
            pub const ALL: &'static [Errno] = &[$(Errno::$name,)*];

            /// Its name, `"EINVAL"`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Errno::$name => stringify!($name),)*
                }
            }

            /// Its number (`libc::EINVAL`).
            pub fn raw(self) -> i32 {
                match self {
                    $(Errno::$name => libc::$name,)*
                }
            }
        }
    };
}

errnos! {
    /// Operation not permitted.
    EPERM,
    /// No such parent, type, vGPU or file.
    ENOENT,
    /// The operation failed inside vgpud (a backend, a socket).
    EIO,
    /// Out of memory.
    ENOMEM,
    /// Permission denied (the wrong access to a sysfs file).
    EACCES,
    /// The UUID (or region, mapping) is in use.
    EEXIST,
    /// Not a directory.
    ENOTDIR,
    /// Is a directory.
    EISDIR,
    /// A malformed request or a value out of range.
    EINVAL,
    /// No space left.
    ENOSPC,
    /// The operation is not implemented.
    ENOSYS,
    /// No instance of the type is left on the parent (the mdev core's "too many users").
    EUSERS,
    /// The operation is not supported.
    ENOTSUP,
    /// The peer reset the connection.
    ECONNRESET,
}

impl Errno {
    /// The errno of this name.
    pub fn from_name(name: &str) -> Option<Errno> {
        Errno::ALL.iter().copied().find(|e| e.name() == name)
    }

    /// The errno of this number.
    pub fn from_raw(raw: i32) -> Option<Errno> {
        Errno::ALL.iter().copied().find(|e| e.raw() == raw)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a failed operation on the device face (a vfio-user request) tells
/// the client, as the kernel's vfio would.
impl From<&devmodel::DeviceError> for Errno {
    fn from(e: &devmodel::DeviceError) -> Self {
        use devmodel::memory::MemError;
        use devmodel::DeviceError;
        match e {
            DeviceError::Memory(MemError::BadMap { .. }) => Errno::EEXIST,
            DeviceError::Memory(MemError::BadUnmap { .. }) => Errno::ENOENT,
            DeviceError::Memory(MemError::ReadOnlyFile { .. }) => Errno::EACCES,
            DeviceError::Memory(
                MemError::Metadata { source, .. } | MemError::MapFile { source, .. },
            ) => source
                .raw_os_error()
                .and_then(Errno::from_raw)
                .unwrap_or(Errno::ENOMEM),
            DeviceError::Memory(MemError::LargerThanHost { .. } | MemError::Region { .. }) => {
                Errno::ENOMEM
            }
            // No room for the framebuffer (a GPU's memory, the host's).
            DeviceError::Backend(
                devmodel::backend::BackendError::VramTooLarge { .. }
                | devmodel::backend::BackendError::VramAlloc { .. },
            ) => Errno::ENOMEM,
            DeviceError::Backend(_) | DeviceError::Thread(_) | DeviceError::DoorbellPage(_) => {
                Errno::EIO
            }
            DeviceError::Memory(
                MemError::Unmapped { .. } | MemError::ReadOnly { .. } | MemError::BeyondFile { .. },
            )
            | DeviceError::Mmio(_)
            | DeviceError::NoSuchRegion(_)
            | DeviceError::BadIrq { .. }
            | DeviceError::NotEventFd(_) => Errno::EINVAL,
        }
    }
}

impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> std::io::Error {
        std::io::Error::from_raw_os_error(e.raw())
    }
}

impl Serialize for Errno {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Errno {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Errno, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Errno::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown errno {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_serde_agree() {
        for &e in Errno::ALL {
            assert_eq!(Errno::from_name(e.name()), Some(e));
            assert_eq!(Errno::from_raw(e.raw()), Some(e));
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(json, format!("\"{}\"", e.name()));
            assert_eq!(serde_json::from_str::<Errno>(&json).unwrap(), e);
        }
        assert_eq!(Errno::EUSERS.raw(), libc::EUSERS);
        assert_eq!(Errno::EEXIST.to_string(), "EEXIST");
        assert!(serde_json::from_str::<Errno>("\"EBANANA\"").is_err());
    }

    #[test]
    fn device_errors_reach_the_client_as_their_own_errno() {
        use devmodel::memory::MemError;
        use devmodel::DeviceError;
        let io = |raw| std::io::Error::from_raw_os_error(raw);
        let cases = [
            (MemError::BadMap { gpa: 0, size: 1 }.into(), Errno::EEXIST),
            (MemError::BadUnmap { gpa: 0, size: 1 }.into(), Errno::ENOENT),
            (
                MemError::ReadOnlyFile { gpa: 0, size: 1 }.into(),
                Errno::EACCES,
            ),
            (
                MemError::LargerThanHost {
                    file_size: 2,
                    host: 1,
                }
                .into(),
                Errno::ENOMEM,
            ),
            (
                MemError::MapFile {
                    len: 1,
                    source: io(libc::EPERM),
                }
                .into(),
                Errno::EPERM,
            ),
            (
                MemError::Metadata {
                    gpa: 0,
                    size: 1,
                    source: io(libc::EBADF),
                }
                .into(),
                Errno::ENOMEM,
            ),
            (DeviceError::NoSuchRegion(5), Errno::EINVAL),
        ];
        for (e, want) in cases {
            assert_eq!(Errno::from(&e), want, "{e}");
        }
    }
}
