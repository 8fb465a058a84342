//! Feature bits of the superblock's `s_feature_compat`, `s_feature_incompat` and
//! `s_feature_ro_compat` words.

pub(crate) const COMPAT_DIR_PREALLOC: u32 = 0x1;
pub(crate) const COMPAT_IMAGIC_INODES: u32 = 0x2;
pub(crate) const COMPAT_HAS_JOURNAL: u32 = 0x4;
pub(crate) const COMPAT_EXT_ATTR: u32 = 0x8;
pub(crate) const COMPAT_RESIZE_INODE: u32 = 0x10;
pub(crate) const COMPAT_DIR_INDEX: u32 = 0x20;
pub(crate) const COMPAT_LAZY_BG: u32 = 0x40;
pub(crate) const COMPAT_EXCLUDE_BITMAP: u32 = 0x100;
pub(crate) const COMPAT_SPARSE_SUPER2: u32 = 0x200;
pub(crate) const COMPAT_FAST_COMMIT: u32 = 0x400;
pub(crate) const COMPAT_STABLE_INODES: u32 = 0x800;
pub(crate) const COMPAT_ORPHAN_FILE: u32 = 0x1000;

pub(crate) const INCOMPAT_COMPRESSION: u32 = 0x1;
pub(crate) const INCOMPAT_FILETYPE: u32 = 0x2;
pub(crate) const INCOMPAT_RECOVER: u32 = 0x4;
pub(crate) const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
pub(crate) const INCOMPAT_META_BG: u32 = 0x10;
pub(crate) const INCOMPAT_EXTENTS: u32 = 0x40;
pub(crate) const INCOMPAT_64BIT: u32 = 0x80;
pub(crate) const INCOMPAT_MMP: u32 = 0x100;
pub(crate) const INCOMPAT_FLEX_BG: u32 = 0x200;
pub(crate) const INCOMPAT_EA_INODE: u32 = 0x400;
pub(crate) const INCOMPAT_DIRDATA: u32 = 0x1000;
pub(crate) const INCOMPAT_CSUM_SEED: u32 = 0x2000;
pub(crate) const INCOMPAT_LARGEDIR: u32 = 0x4000;
pub(crate) const INCOMPAT_INLINE_DATA: u32 = 0x8000;
pub(crate) const INCOMPAT_ENCRYPT: u32 = 0x10000;
pub(crate) const INCOMPAT_CASEFOLD: u32 = 0x20000;

pub(crate) const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
pub(crate) const RO_COMPAT_LARGE_FILE: u32 = 0x2;
pub(crate) const RO_COMPAT_BTREE_DIR: u32 = 0x4;
pub(crate) const RO_COMPAT_HUGE_FILE: u32 = 0x8;
pub(crate) const RO_COMPAT_GDT_CSUM: u32 = 0x10;
pub(crate) const RO_COMPAT_DIR_NLINK: u32 = 0x20;
pub(crate) const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
pub(crate) const RO_COMPAT_HAS_SNAPSHOT: u32 = 0x80;
pub(crate) const RO_COMPAT_QUOTA: u32 = 0x100;
pub(crate) const RO_COMPAT_BIGALLOC: u32 = 0x200;
pub(crate) const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
pub(crate) const RO_COMPAT_REPLICA: u32 = 0x800;
pub(crate) const RO_COMPAT_READONLY: u32 = 0x1000;
pub(crate) const RO_COMPAT_PROJECT: u32 = 0x2000;
pub(crate) const RO_COMPAT_SHARED_BLOCKS: u32 = 0x4000;
pub(crate) const RO_COMPAT_VERITY: u32 = 0x8000;
pub(crate) const RO_COMPAT_ORPHAN_PRESENT: u32 = 0x10000;
