// SPDX-License-Identifier: GPL-2.0
/* memtrack's BPF iterators: the facts the procfs readers get from /proc text, read straight
 * from kernel objects in one read() each.
 *
 *   iter/task_file  one record per open file that can be a shared buffer: regular files on
 *                   tmpfs/hugetlbfs/ramfs (memfd, /dev/shm, ...), dma-bufs, DRM char devices;
 *                   plus one task record (comm, uid, start time) before a task's first one
 *   iter/task_vma   one record per shared (VM_MAYSHARE, maps "s") mapping of such a file,
 *                   with a task record (start = start time, end = uid, name = comm) first
 *   iter/dmabuf     one record per dma-buf in the system (Linux >= 6.16)
 *   task_sum        (iter/task_file) per task a hash of what task_file would write of it
 *   iter/task       task_mm: per task its mm change sequence and identity, so a refresh
 *                   re-reads (one iter/task_vma per process) only the mappings that can
 *                   have moved
 *   iter.s/task     task_cmd: per task its cmdline, where it can be sure to print what
 *                   /proc/PID/cmdline prints (else userspace reads that file)
 *
 * Everything else is filtered out here, in the kernel. Records are fixed-size so userspace
 * parses a whole read with struct.iter_unpack; the layouts are mirrored in records.py.
 * Records are of thread groups (tgid) and come from their leader, and from the other threads
 * only where those hold what the leader does not (see of_group): a thread with an fd table
 * of its own (unshare(CLONE_FILES)), or every live thread once the leader has exited (its
 * files and mm are gone). Such records carry R_THREAD; userspace drops their repeats.
 */
#include "core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

#define TMPFS_MAGIC     0x01021994
#define RAMFS_MAGIC     0x858458f6
#define HUGETLBFS_MAGIC 0x958458f6
#define DMA_BUF_MAGIC   0x444d4142

#define S_IFMT  00170000
#define S_IFREG 0100000
#define S_IFCHR 0020000

#define VM_MAYSHARE 0x00000080UL
#define VM_PFNMAP   0x00000400UL

/* record flags (records.py) */
#define R_TASK     0x01   /* a task record: fd = uid, ino = start_time, name = comm */
#define R_PSEUDO   0x02   /* a pseudo file: its path is the d_dname of its dentry name */
#define R_DMABUF   0x04
#define R_DRM      0x08   /* a DRM char device: dev = i_rdev */
#define R_TRUNC    0x10   /* the name did not fit */
#define R_NAMED    0x20   /* dma-buf with a name (DMA_BUF_SET_NAME) */
#define R_PFNMAP   0x40
#define R_THREAD   0x80   /* from a thread other than the leader: may repeat another's */
#define R_PRIVATE  0x10000 /* a MAP_PRIVATE mapping (above the name length's bits) */
#define R_LEN_SHIFT 8     /* bits 8-15: the length of a copied dentry name (0: not given) */

#define NAME_LEN 64
#define EXP_LEN  32

struct fd_rec {
	u32 tgid;
	u32 fd;
	u64 ino;
	u64 size;
	u32 dev;          /* kernel dev_t: MAJOR << 20 | MINOR */
	u32 flags;
	s64 count;        /* dma-buf: the file count, as fdinfo's count: prints it */
	char name[NAME_LEN];
	char exp[EXP_LEN];
	u64 blocks;       /* i_blocks: 512-byte units the file holds (what stat's st_blocks says) */
};

struct vma_rec {
	u32 tgid;
	u32 flags;
	u64 start;
	u64 end;
	u64 pgoff;
	u64 ino;
	u64 size;
	u32 dev;
	u32 pad;
	char name[NAME_LEN];
	u64 blocks;       /* as in fd_rec */
};

struct dmabuf_rec {
	u64 ino;
	u64 size;
	s64 count;
	u32 flags;
	u32 pad;
	char exp[EXP_LEN];
	char name[NAME_LEN];
};

/* Configuration (set by the loader) and the last task each iterator described. A map, not
 * global variables: libbpf 1.x backs .rodata/.bss with MAP_SHARED|MAP_ANONYMOUS memory in
 * the loading process, which memtrack would then report about itself as shared memory. */
struct state {
	u32 drm_major;          /* DRM char major (226); 0 = do not report DRM fds */
	u32 abi;
	u64 file_session;       /* (session, tgid) of the last task record, per iterator */
	u64 vma_session;
	u32 file_tgid;
	u32 vma_tgid;
	u64 sum_session;        /* task_sum: the task whose sum is still to go out */
	u64 sum_hash;
	u32 sum_tgid;
	u32 sum_n;
	u32 shm_dev;            /* /dev/shm's s_dev (set by the loader): see task_vma */
	u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct state);
} state SEC(".maps");

static __always_inline struct state *get_state(void)
{
	u32 zero = 0;

	return bpf_map_lookup_elem(&state, &zero);
}

/* Whether task's files (files) or mappings (!files) are to be reported for its thread group:
 * the leader's always; another thread's files where they are not the leader's table (the
 * file iterators skip threads sharing it already, this says so again for any iterator), its
 * mm where the leader has none left (it exited). *thread: whether it is not the leader. */
static __always_inline bool of_group(struct task_struct *task, bool files, bool *thread)
{
	struct task_struct *leader;

	*thread = task->pid != task->tgid;
	if (!*thread)
		return 1;
	leader = task->group_leader;
	if (files)
		return task->files && BPF_CORE_READ(leader, files) != task->files;
	return task->mm && !BPF_CORE_READ(leader, mm);
}

static __always_inline bool buffer_fs(unsigned long magic)
{
	return magic == TMPFS_MAGIC || magic == HUGETLBFS_MAGIC || magic == RAMFS_MAGIC;
}

/* The count fdinfo and debugfs print. Both the iterators and fdinfo hold one reference of
 * their own while they look, so fdinfo prints file_count - 1: so do we. */
static __always_inline s64 file_count_less_one(struct file *f)
{
	if (bpf_core_field_exists(f->f_ref))
		return BPF_CORE_READ(f, f_ref.refcnt.counter);      /* file_ref_t holds count - 1 */
	return BPF_CORE_READ((struct file___old *)f, f_count.counter) - 1;
}

/* What kind of open file this is to memtrack: a shared buffer (dma-buf, or a regular file
 * on tmpfs/hugetlbfs/ramfs), a DRM device, or nothing to report. */
#define F_NONE   0
#define F_BUFFER 1
#define F_DRM    2

static __always_inline int file_kind(struct state *st, struct inode *inode)
{
	unsigned long magic = inode->i_sb->s_magic;
	umode_t mode = inode->i_mode;

	if (magic == DMA_BUF_MAGIC || (buffer_fs(magic) && (mode & S_IFMT) == S_IFREG))
		return F_BUFFER;
	if (st->drm_major && (mode & S_IFMT) == S_IFCHR && (inode->i_rdev >> 20) == st->drm_major)
		return F_DRM;
	return F_NONE;
}

/* R_PSEUDO and R_TRUNC of a file on a filesystem (not a dma-buf): see file_name. */
static __always_inline u32 dentry_flags(struct file *file)
{
	struct dentry *de = file->f_path.dentry;
	u32 flags = 0;

	if (de->d_op && de->d_op->d_dname &&
	    (de->d_parent != de || de != file->f_path.mnt->mnt_root))
		flags |= R_PSEUDO;
	if (de->d_name.len >= NAME_LEN)
		flags |= R_TRUNC;
	return flags;
}

/* Name and flags of a file as d_path would print it: a pseudo file (memfd, SysV, shared
 * anonymous) is "/" + its dentry name + " (deleted)" (simple_dname), a dma-buf is
 * "/dmabuf:" + its name (dmabuf_dname); anything else needs a real path walk, left to
 * userspace (readlink), which sees it without R_PSEUDO. */
static __always_inline u32 file_name(struct file *file, char *name, char *exp, s64 *count,
				     u64 *size, u64 *blocks)
{
	struct dentry *de = file->f_path.dentry;
	struct inode *inode = file->f_inode;
	u32 flags = 0;
	long len;

	if (inode->i_sb->s_magic == DMA_BUF_MAGIC) {
		struct dma_buf *db = file->private_data;
		const char *n = BPF_CORE_READ(db, name);

		flags |= R_DMABUF | R_PSEUDO;
		*size = BPF_CORE_READ(db, size);
		if (count)
			*count = file_count_less_one(file);
		if (exp)
			bpf_probe_read_kernel_str(exp, EXP_LEN, BPF_CORE_READ(db, exp_name));
		if (n) {
			flags |= R_NAMED;
			bpf_probe_read_kernel_str(name, NAME_LEN, n);
		}
		return flags;
	}
	*size = inode->i_size;
	*blocks = inode->i_blocks;
	len = bpf_probe_read_kernel_str(name, NAME_LEN, de->d_name.name);
	if (len > 1)            /* the name's length, for userspace to cut it without a search */
		flags |= (u32)(len - 1) << R_LEN_SHIFT;
	return flags | dentry_flags(file);
}

/* The record of an open file memtrack reports, into *r; 0 if it is not one. */
static __always_inline int file_record(struct state *st, struct task_struct *task, u32 fd,
				       struct file *file, struct fd_rec *r)
{
	struct inode *inode = file->f_inode;
	int kind = file_kind(st, inode);

	if (kind == F_NONE)
		return 0;
	if (kind == F_BUFFER) {
		r->flags = file_name(file, r->name, r->exp, &r->count, &r->size, &r->blocks);
		r->dev = inode->i_sb->s_dev;
	} else {
		r->flags = R_DRM;
		r->dev = inode->i_rdev;
	}
	r->ino = inode->i_ino;
	r->tgid = task->tgid;
	r->fd = fd;
	return 1;
}

SEC("iter/task_file")
int task_file(struct bpf_iter__task_file *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct fd_rec r = {};
	struct state *st = get_state();
	struct task_struct *leader;
	bool new_task, thread;
	long err = 0;

	if (!st || !task || !file || !of_group(task, 1, &thread))
		return 0;
	if (!file_record(st, task, ctx->fd, file, &r))
		return 0;
	if (thread)
		r.flags |= R_THREAD;

	new_task = st->file_tgid != r.tgid || st->file_session != ctx->meta->session_id;
	if (new_task) {
		struct fd_rec t = {};

		/* the process as /proc/<tgid> shows it: its leader's, even an exited one's */
		leader = task->group_leader;
		t.flags = R_TASK;
		t.tgid = r.tgid;
		t.fd = BPF_CORE_READ(leader, real_cred, uid.val);
		t.ino = BPF_CORE_READ(leader, start_time);
		bpf_probe_read_kernel_str(t.name, sizeof(task->comm), leader->comm);
		err = bpf_seq_write(seq, &t, sizeof(t));
	}
	if (!err)
		err = bpf_seq_write(seq, &r, sizeof(r));
	/* When the read buffer overflows, the kernel drops everything this run wrote and runs
	 * it again for the same file in the next read(): remember the task only once both
	 * records are really out, or the rerun would leave the task record out. */
	if (!err && new_task) {
		st->file_tgid = r.tgid;
		st->file_session = ctx->meta->session_id;
	}
	return 0;
}

/* iter/task_file, summed: for refreshes, per task one record holding a hash of what
 * task_file would say of its buffer files and of the task (uid, start time, comm), with no
 * names copied: a dentry's name is stood for by its hash and length (a rename changes
 * them), a dma-buf's name (at most 32 bytes, DMA_BUF_NAME_LEN) by its bytes mixed into a
 * word. A reader compares the sums with the last scan's and reads task_file again (for one
 * process) only where they moved. */
struct sum_fields {
	u32 tgid;
	u32 fd;
	u64 ino;
	u64 size;
	u32 dev;
	u32 flags;
	s64 count;
	u64 name;         /* d_name.hash_len, or the folded dma-buf name */
	u64 blocks;       /* a buffer filled or trimmed moves it */
};                        /* never written: task_sum hashes it */

static __always_inline u64 mix(u64 h, u64 w)
{
	h ^= w;
	h *= 0x100000001b3ULL;
	return h ^ (h >> 29);
}

static __always_inline int sum_record(struct state *st, struct task_struct *task, u32 fd,
				       struct file *file, struct sum_fields *r)
{
	struct inode *inode = file->f_inode;
	int kind = file_kind(st, inode);

	if (kind == F_NONE)
		return 0;
	if (kind == F_DRM) {
		r->flags = R_DRM;
		r->dev = inode->i_rdev;
	} else if (inode->i_sb->s_magic == DMA_BUF_MAGIC) {
		struct dma_buf *db = file->private_data;
		const char *n = BPF_CORE_READ(db, name);
		u64 w[4] = {};

		r->flags = R_DMABUF | R_PSEUDO;
		r->size = BPF_CORE_READ(db, size);
		r->count = file_count_less_one(file);
		if (n) {
			r->flags |= R_NAMED;
			bpf_probe_read_kernel_str(w, sizeof(w), n);
		}
		/* multiplied through word by word: an xor of the words, as before, let two
		 * printable names collide, and a rename between them went unseen */
		r->name = mix(mix(mix(mix((u64)BPF_CORE_READ(db, exp_name), w[0]), w[1]), w[2]), w[3]);
		r->dev = inode->i_sb->s_dev;
	} else {
		r->size = inode->i_size;
		r->blocks = inode->i_blocks;
		r->name = file->f_path.dentry->d_name.hash_len;
		r->flags = dentry_flags(file);
		r->dev = inode->i_sb->s_dev;
	}
	r->ino = inode->i_ino;
	r->tgid = task->tgid;
	r->fd = fd;
	return 1;
}

struct sum_rec {
	u32 tgid;
	u32 n;            /* buffer files */
	u64 hash;
};

static __always_inline long sum_out(struct seq_file *seq, struct state *st)
{
	struct sum_rec t = { .tgid = st->sum_tgid, .n = st->sum_n, .hash = st->sum_hash };

	return bpf_seq_write(seq, &t, sizeof(t));
}

SEC("iter/task_file")
int task_sum(struct bpf_iter__task_file *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct state *st = get_state();
	struct sum_fields r = {};
	const u64 *w = (const u64 *)&r;
	struct task_struct *leader;
	bool open, thread;
	u64 h;
	u32 n;

	if (!st)
		return 0;
	open = st->sum_session == ctx->meta->session_id && st->sum_n;
	if (!task) {                    /* the end: the last task's sum */
		if (open && !sum_out(seq, st))
			st->sum_n = 0;
		return 0;
	}
	if (!file || !of_group(task, 1, &thread))
		return 0;
	if (!sum_record(st, task, ctx->fd, file, &r))
		return 0;
	if (thread)
		r.flags |= R_THREAD;
	if (open && st->sum_tgid == r.tgid) {
		h = st->sum_hash;
		n = st->sum_n;
	} else {
		u64 comm[2] = {};

		/* the last task's sum goes out first; on overflow nothing is kept and the kernel
		 * runs this again for the same file in the next read() */
		if (open && sum_out(seq, st))
			return 0;
		leader = task->group_leader;
		bpf_probe_read_kernel(comm, sizeof(comm), leader->comm);
		h = mix(mix(mix(0xcbf29ce484222325ULL, BPF_CORE_READ(leader, start_time)),
			    ((u64)BPF_CORE_READ(leader, real_cred, uid.val) << 32) | r.tgid), comm[0]);
		h = mix(h, comm[1]);
		n = 0;
	}
#pragma unroll
	for (int i = 0; i < sizeof(r) / 8; i++)
		h = mix(h, w[i]);
	st->sum_session = ctx->meta->session_id;
	st->sum_tgid = r.tgid;
	st->sum_hash = h;
	st->sum_n = n + 1;
	return 0;
}

/* iter/task: one record per thread-group leader, cheap (no file or VMA is visited): what a
 * refresh needs to know whether a task's mappings may have moved (the mm change sequence)
 * and whether /proc's access verdict for it may have changed (its credentials, its mm). */
struct task_rec {
	u32 tgid;
	u32 flags;        /* T_SEQ: seq is the mm change sequence (or the task has no mm) */
	u64 start_time;
	u64 seq;
	u64 cred;         /* the task's real_cred: a new one on every credential change */
	u64 mm;           /* the task's mm: a new one on exec */
	char comm[16];    /* what a task record of task_vma would say (PR_SET_NAME moves it) */
};

#define T_SEQ 0x01

static __always_inline u64 mm_seq(struct mm_struct *mm, u32 *flags)
{
	if (!mm) {
		*flags |= T_SEQ;
		return 0;
	}
	if (bpf_core_field_exists(((struct mm_struct___seq *)mm)->mm_lock_seq)) {
		*flags |= T_SEQ;
		return BPF_CORE_READ((struct mm_struct___seq *)mm, mm_lock_seq.sequence);
	}
	if (bpf_core_field_exists(((struct mm_struct___int *)mm)->mm_lock_seq)) {
		*flags |= T_SEQ;
		return (u32)BPF_CORE_READ((struct mm_struct___int *)mm, mm_lock_seq);
	}
	return 0;
}

SEC("iter/task")
int task_mm(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	struct task_rec r = {};
	struct mm_struct *mm;
	struct task_struct *leader;
	bool thread;

	/* an exited leader's process: a live thread's record follows the leader's, and being
	 * later, stands for the process (its mm's sequence) in userspace's table */
	if (!task || !of_group(task, 0, &thread))
		return 0;
	leader = task->group_leader;
	mm = BPF_CORE_READ(task, mm);
	r.tgid = task->tgid;
	r.start_time = BPF_CORE_READ(leader, start_time);
	r.seq = mm_seq(mm, &r.flags);
	r.cred = (u64)BPF_CORE_READ(leader, real_cred);
	r.mm = (u64)mm;
	bpf_probe_read_kernel(r.comm, sizeof(r.comm), leader->comm);
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

/* iter.s/task (sleepable: it reads other processes' memory), task_cmd: per task what
 * /proc/PID/cmdline prints, when this can be sure of it: arg holds exactly the bytes
 * get_mm_cmdline() copies and flags C_OK. That is: the argument area is at most CMD_LEN
 * bytes, its last byte is the NUL of the last argument (else the kernel follows a
 * setproctitle into the environment), it lies in anonymous memory (the kernel reads it
 * with FOLL_ANON, which refuses a file or memfd mapping PR_SET_MM_MAP may have moved it
 * to), and the task's mm and argument bounds read the same after the copy as before (no
 * exec or PR_SET_MM raced it). Otherwise no C_OK, and userspace reads /proc itself. No mm
 * (a kernel thread, a zombie) or no argument area yet: /proc prints nothing, nor does this
 * (C_OK, len 0). Linux >= 5.18 (bpf_copy_from_user_task); the loader leaves it out
 * elsewhere. */
#define CMD_LEN 232
#define C_OK    0x01

struct cmd_rec {
	u32 tgid;
	u32 flags;
	u64 start_time;
	u32 len;
	u32 pad;
	char arg[CMD_LEN];
};

static long vma_anon(struct task_struct *task, struct vm_area_struct *vma, void *anon)
{
	*(int *)anon = !BPF_CORE_READ(vma, vm_ops);
	return 0;
}

/* whether addr lies in an anonymous mapping of task (0 too where the mm is busy) */
static __always_inline int anon_at(struct task_struct *task, unsigned long addr)
{
	int anon = 0;

	if (bpf_find_vma(task, addr, vma_anon, &anon, 0))
		return 0;
	return anon;
}

SEC("iter.s/task")
int task_cmd(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	struct mm_struct___args *mm;
	struct cmd_rec r = {};
	unsigned long start, end, len;
	char last = 1;

	if (!task || task->pid != task->tgid)
		return 0;
	r.tgid = task->tgid;
	r.start_time = task->start_time;
	mm = (struct mm_struct___args *)BPF_CORE_READ(task, mm);
	if (!mm || !BPF_CORE_READ(mm, env_end)) {
		r.flags = C_OK;
		goto out;
	}
	start = BPF_CORE_READ(mm, arg_start);
	end = BPF_CORE_READ(mm, arg_end);
	if (start >= end) {
		r.flags = C_OK;
		goto out;
	}
	len = end - start;
	if (len > CMD_LEN)
		goto out;
	if (!anon_at(task, start) || !anon_at(task, end - 1))
		goto out;
	if (bpf_copy_from_user_task(&last, 1, (void *)(end - 1), task, 0) || last)
		goto out;
	if (bpf_copy_from_user_task(r.arg, len, (void *)start, task, 0))
		goto out;
	if ((struct mm_struct___args *)BPF_CORE_READ(task, mm) != mm ||
	    BPF_CORE_READ(mm, arg_start) != start || BPF_CORE_READ(mm, arg_end) != end)
		goto out;
	r.len = len;
	r.flags = C_OK;
out:
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

SEC("iter/task_vma")
int task_vma(struct bpf_iter__task_vma *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	struct vm_area_struct *vma = ctx->vma;
	struct vma_rec r = {};
	struct file *file;
	struct inode *inode;
	struct state *st = get_state();
	unsigned long vm_flags;
	struct task_struct *leader;
	bool new_task, thread;
	long err = 0;

	if (!st || !task || !vma || !of_group(task, 0, &thread))
		return 0;
	vm_flags = vma->vm_flags;
	file = vma->vm_file;
	if (!file)
		return 0;
	inode = file->f_inode;
	if (file_kind(st, inode) != F_BUFFER)
		return 0;
	r.tgid = task->tgid;
	r.flags = file_name(file, r.name, 0, 0, &r.size, &r.blocks);
	if (!(vm_flags & VM_MAYSHARE)) {
		/* A private mapping holds the buffer too (a program run from a memfd): reported
		 * for pseudo files (memfd, dma-buf; userspace drops private anonymous memory) and
		 * files on /dev/shm's filesystem; not for every file on any tmpfs (/tmp), whose
		 * names userspace would have to read for nothing. */
		if (!(r.flags & R_PSEUDO) && inode->i_sb->s_dev != st->shm_dev)
			return 0;
		r.flags |= R_PRIVATE;
	}
	if (vm_flags & VM_PFNMAP)
		r.flags |= R_PFNMAP;
	if (thread)
		r.flags |= R_THREAD;
	r.start = vma->vm_start;
	r.end = vma->vm_end;
	r.pgoff = vma->vm_pgoff;
	r.ino = inode->i_ino;
	r.dev = inode->i_sb->s_dev;
	new_task = st->vma_tgid != r.tgid || st->vma_session != ctx->meta->session_id;
	if (new_task) {
		struct vma_rec t = {};

		leader = task->group_leader;
		t.flags = R_TASK;
		t.tgid = r.tgid;
		t.start = BPF_CORE_READ(leader, start_time);
		t.end = BPF_CORE_READ(leader, real_cred, uid.val);
		bpf_probe_read_kernel_str(t.name, sizeof(task->comm), leader->comm);
		err = bpf_seq_write(seq, &t, sizeof(t));
	}
	if (!err)
		err = bpf_seq_write(seq, &r, sizeof(r));
	if (!err && new_task) {            /* as in task_file: only once both are out */
		st->vma_tgid = r.tgid;
		st->vma_session = ctx->meta->session_id;
	}
	return 0;
}

SEC("iter/dmabuf")
int dmabuf(struct bpf_iter__dmabuf *ctx)
{
	struct dma_buf *db = ctx->dmabuf;
	struct dmabuf_rec r = {};
	const char *n;

	if (!db)
		return 0;
	r.ino = db->file->f_inode->i_ino;
	r.size = db->size;
	r.count = file_count_less_one(db->file);
	bpf_probe_read_kernel_str(r.exp, EXP_LEN, db->exp_name);
	n = db->name;
	if (n) {
		r.flags |= R_NAMED;
		bpf_probe_read_kernel_str(r.name, NAME_LEN, n);
	}
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

