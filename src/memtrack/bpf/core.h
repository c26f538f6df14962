/* The few kernel types memtrack.bpf.c reads, declared for CO-RE.
 *
 * preserve_access_index makes every field access a relocation that libbpf resolves against
 * the running kernel's BTF at load time, so field order and sizes here do not matter and the
 * object runs on any kernel with BTF that has these fields. Written by hand rather than
 * generated (bpftool btf dump ... format c) so the build needs no vmlinux.h of one kernel.
 */
#ifndef MEMTRACK_CORE_H
#define MEMTRACK_CORE_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef __u8 u8;
typedef __u32 u32;
typedef __u64 u64;
typedef __s64 s64;
typedef __u32 dev_t;
typedef unsigned short umode_t;
typedef long long loff_t;
typedef _Bool bool;

enum bpf_map_type { BPF_MAP_TYPE_UNSPEC = 0, BPF_MAP_TYPE_ARRAY = 2 };

#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
	u64 session_id;
	u64 seq_num;
};

struct kuid { u32 val; };
struct cred { struct kuid uid; };

struct mm_struct;
struct files_struct;

struct task_struct {
	int pid;
	int tgid;
	char comm[16];
	u64 start_time;
	const struct cred *real_cred;
	const struct cred *cred;
	struct mm_struct *mm;
	struct task_struct *group_leader;
	struct files_struct *files;
};

/* mm->mm_lock_seq moves on every mmap write-lock cycle (mmap, munmap, mremap, mprotect...):
 * a seqcount_t since 6.13, an int in 6.4-6.12, absent without CONFIG_PER_VMA_LOCK. */
struct seqcount___mt { unsigned int sequence; };
struct mm_struct___seq { struct seqcount___mt mm_lock_seq; };
struct mm_struct___int { int mm_lock_seq; };
/* the argument area /proc/PID/cmdline prints (mm->arg_start..arg_end, env_end set once exec
 * is far enough along) */
struct mm_struct___args {
	unsigned long arg_start;
	unsigned long arg_end;
	unsigned long env_start;
	unsigned long env_end;
};

struct super_block {
	dev_t s_dev;
	unsigned long s_magic;
};

struct inode {
	umode_t i_mode;
	struct super_block *i_sb;
	unsigned long i_ino;
	dev_t i_rdev;
	loff_t i_size;
	u64 i_blocks;          /* blkcnt_t: 512-byte units the file holds */
};

struct qstr {
	union {
		struct { u32 hash; u32 len; };
		u64 hash_len;
	};
	const unsigned char *name;
};

struct dentry;
struct dentry_operations {
	char *(*d_dname)(struct dentry *, char *, int);
};

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
	const struct dentry_operations *d_op;
};

struct vfsmount { struct dentry *mnt_root; };
struct path { struct vfsmount *mnt; struct dentry *dentry; };

typedef struct { s64 counter; } atomic64_t;
typedef struct { atomic64_t refcnt; } file_ref_t;
struct file {
	struct path f_path;
	struct inode *f_inode;
	void *private_data;
	file_ref_t f_ref;                  /* Linux >= 6.13: holds count - 1 */
};
struct file___old { struct { long counter; } f_count; };   /* before 6.13 */

struct dma_buf {
	unsigned long size;
	struct file *file;
	const char *exp_name;
	const char *name;
};

struct vm_operations_struct;

struct vm_area_struct {
	unsigned long vm_start;
	unsigned long vm_end;
	unsigned long vm_flags;
	unsigned long vm_pgoff;
	struct file *vm_file;
	const struct vm_operations_struct *vm_ops;   /* NULL: anonymous (vma_is_anonymous) */
};

struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	u32 fd;
	struct file *file;
};

struct bpf_iter__task_vma {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	struct vm_area_struct *vma;
};

struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; };

struct bpf_iter__dmabuf {
	struct bpf_iter_meta *meta;
	struct dma_buf *dmabuf;
};

#pragma clang attribute pop

#endif
