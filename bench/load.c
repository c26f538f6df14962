/* Benchmark load: N processes each holding F memfds, a tenth of them shared with other
 * processes, some mapped. Prints "ready" when every child is set up; exits (and so do the
 * children, by PR_SET_PDEATHSIG) when stdin closes.
 *   load N F   (default 1000 20)
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#define SIZE 65536

static int mk(const char *name)
{
	int fd = memfd_create(name, 0);
	if (fd < 0 || ftruncate(fd, SIZE) < 0) {
		perror("memfd_create");
		exit(1);
	}
	return fd;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 1000;
	int f = argc > 2 ? atoi(argv[2]) : 20;
	int nshared = f / 10, pool = n / 10 > 0 ? n / 10 : 1;
	int *shared = calloc(pool, sizeof(int));
	int ready[2];
	char name[64];

	if (pipe(ready) < 0)
		return 1;
	for (int i = 0; i < pool; i++) {
		snprintf(name, sizeof(name), "bench-shared-%d", i);
		shared[i] = mk(name);
	}
	for (int i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("fork");
			return 1;
		}
		if (pid)
			continue;
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(ready[0]);
		/* keep nshared of the pool (each pool buffer ends up in about 10 processes) */
		for (int j = 0; j < pool; j++) {
			int keep = 0;
			for (int k = 0; k < nshared; k++)
				keep |= j == (i + k) % pool;
			if (!keep)
				close(shared[j]);
		}
		mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, shared[i % pool], 0);
		for (int j = 0; j < f - nshared; j++) {
			snprintf(name, sizeof(name), "bench-%d-%d", i, j);
			int fd = mk(name);
			if (j % 4 == 0)      /* a quarter mapped */
				mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		}
		if (write(ready[1], "x", 1) != 1)
			_exit(1);
		close(ready[1]);
		for (;;)
			pause();
	}
	close(ready[1]);
	for (int i = 0; i < n; i++) {
		char c;
		if (read(ready[0], &c, 1) != 1) {
			fprintf(stderr, "a child failed\n");
			return 1;
		}
	}
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	while (getchar() != EOF)
		;
	return 0;
}
