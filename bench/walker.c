/* The minimal C /proc walker memtrack's scans are compared with: for every process, list
 * fd/, readlink each fd, read the fdinfo of shared-buffer fds, read maps and pick the shared
 * buffer mappings. No parsing beyond that, no output but counts. Prints the walk time of
 * each of R rounds in ms:  walker [R]
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char buf[1 << 20];

static int is_buffer(const char *t)
{
	return !strncmp(t, "/memfd:", 7) || !strncmp(t, "/dmabuf:", 8) ||
	       !strncmp(t, "/dev/shm/", 9) || !strcmp(t, "/dev/zero (deleted)") ||
	       !strncmp(t, "/SYSV", 5) || !strcmp(t, "anon_inode:dmabuf");
}

static long read_all(int dirfd, const char *name)
{
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	long total = 0, n;
	if (fd < 0)
		return -1;
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		total += n;
	close(fd);
	return total;
}

static void walk(long *fds, long *bufs, long *maps)
{
	DIR *proc = opendir("/proc");
	struct dirent *de;
	char path[300], target[4096];

	while ((de = readdir(proc))) {
		if (de->d_name[0] < '0' || de->d_name[0] > '9')
			continue;
		int pdir = openat(dirfd(proc), de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (pdir < 0)
			continue;
		int fddir = openat(pdir, "fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fddir >= 0) {
			DIR *d = fdopendir(fddir);
			struct dirent *fe;
			while ((fe = readdir(d))) {
				if (fe->d_name[0] == '.')
					continue;
				ssize_t n = readlinkat(fddir, fe->d_name, target, sizeof(target) - 1);
				if (n < 0)
					continue;
				target[n] = 0;
				(*fds)++;
				if (is_buffer(target)) {
					snprintf(path, sizeof(path), "fdinfo/%s", fe->d_name);
					if (read_all(pdir, path) > 0)
						(*bufs)++;
				}
			}
			closedir(d);
		}
		int mfd = openat(pdir, "maps", O_RDONLY | O_CLOEXEC);
		if (mfd >= 0) {
			/* scan for shared mappings of buffers: " rw-s " ... path */
			ssize_t n, keep = 0;
			while ((n = read(mfd, buf + keep, sizeof(buf) - 1 - keep)) > 0) {
				n += keep;
				buf[n] = 0;
				char *line = buf, *nl;
				while ((nl = memchr(line, '\n', buf + n - line))) {
					*nl = 0;
					char *sp = strchr(line, ' ');
					if (sp && sp[4] == 's') {
						char *p = strchr(line, '/');
						if (p && is_buffer(p))
							(*maps)++;
					}
					line = nl + 1;
				}
				keep = buf + n - line;
				memmove(buf, line, keep);
			}
			close(mfd);
		}
		close(pdir);
	}
	closedir(proc);
}

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 5;
	for (int r = 0; r < rounds; r++) {
		struct timespec a, b;
		long fds = 0, bufs = 0, maps = 0;
		clock_gettime(CLOCK_MONOTONIC, &a);
		walk(&fds, &bufs, &maps);
		clock_gettime(CLOCK_MONOTONIC, &b);
		printf("%.3f %ld %ld %ld\n", (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6,
		       fds, bufs, maps);
	}
	return 0;
}
