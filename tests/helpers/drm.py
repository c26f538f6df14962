"""DRM clients' fdinfo in each driver's exact format, and a tree of processes holding them
(the DRM and JSON-output tests)."""
import kfixture

KiB, MiB = 1024, 1024 * 1024


def drm_fdinfo(ino, body):
    return kfixture.fdinfo_generic(ino, "02100002", 24) + body


# amdgpu (amdgpu_show_fdinfo + drm_show_memory_stats): legacy drm-memory-* (with the
# ": \t" quirk), the standard keys, amd-* keys and a pasid line
AMDGPU = drm_fdinfo(1082, (
    "drm-driver:\tamdgpu\n"
    "drm-client-id:\t30\n"
    "drm-pdev:\t0000:04:00.0\n"
    "pasid:\t32770\n"
    "drm-client-name:\tfirefox\n"
    "drm-memory-vram:\t36152 KiB\n"
    "drm-memory-gtt: \t15892 KiB\n"
    "drm-memory-cpu: \t0 KiB\n"
    "amd-memory-visible-vram:\t36152 KiB\n"
    "amd-evicted-vram:\t0 KiB\n"
    "amd-evicted-visible-vram:\t0 KiB\n"
    "amd-requested-vram:\t36152 KiB\n"
    "amd-requested-visible-vram:\t0 KiB\n"
    "amd-requested-gtt:\t15892 KiB\n"
    "drm-total-vram:\t36152 KiB\n"
    "drm-shared-vram:\t2048 KiB\n"
    "drm-active-vram:\t1024 KiB\n"
    "drm-resident-vram:\t36152 KiB\n"
    "drm-purgeable-vram:\t0\n"
    "drm-total-gtt:\t15892 KiB\n"
    "drm-resident-gtt:\t15892 KiB\n"
    "drm-engine-gfx:\t4087540 ns\n"
    "drm-engine-compute:\t0 ns\n"))

# an older amdgpu (5.x): only the legacy keys
AMDGPU_LEGACY = drm_fdinfo(1200, (
    "drm-driver:\tamdgpu\n"
    "drm-pdev:\t0000:04:00.0\n"
    "pasid:\t32771\n"
    "drm-client-id:\t31\n"
    "drm-memory-vram:\t1024 KiB\n"
    "drm-memory-gtt: \t512 KiB\n"
    "drm-memory-cpu: \t0 KiB\n"
    "drm-engine-gfx:\t100 ns\n"))

I915 = drm_fdinfo(685, (
    "drm-driver:\ti915\n"
    "drm-client-id:\t18\n"
    "drm-pdev:\t0000:03:00.0\n"
    "drm-total-system0:\t4 MiB\n"
    "drm-shared-system0:\t0\n"
    "drm-active-system0:\t0\n"
    "drm-resident-system0:\t4 MiB\n"
    "drm-purgeable-system0:\t0\n"
    "drm-total-local0:\t256 MiB\n"
    "drm-shared-local0:\t16 MiB\n"
    "drm-active-local0:\t8 MiB\n"
    "drm-resident-local0:\t200 MiB\n"
    "drm-purgeable-local0:\t0\n"
    "drm-total-stolen-local0:\t0\n"
    "drm-shared-stolen-local0:\t0\n"
    "drm-active-stolen-local0:\t0\n"
    "drm-resident-stolen-local0:\t0\n"
    "drm-purgeable-stolen-local0:\t0\n"
    "drm-engine-render:\t25662044495 ns\n"
    "drm-engine-copy:\t0 ns\n"
    "drm-engine-video:\t0 ns\n"
    "drm-engine-capacity-video:\t2\n"
    "drm-engine-video-enhance:\t0 ns\n"))

XE = drm_fdinfo(700, (
    "drm-driver:\txe\n"
    "drm-client-id:\t7\n"
    "drm-pdev:\t0000:00:02.0\n"
    "drm-total-system0:\t12 MiB\n"
    "drm-shared-system0:\t0\n"
    "drm-active-system0:\t0\n"
    "drm-resident-system0:\t12 MiB\n"
    "drm-purgeable-system0:\t0\n"
    "drm-total-stolen:\t8192 KiB\n"
    "drm-shared-stolen:\t0\n"
    "drm-active-stolen:\t0\n"
    "drm-resident-stolen:\t8192 KiB\n"
    "drm-purgeable-stolen:\t0\n"
    "drm-cycles-rcs:\t28257900\n"
    "drm-total-cycles-rcs:\t7655183225\n"
    "drm-cycles-vcs:\t0\n"
    "drm-total-cycles-vcs:\t7655183225\n"
    "drm-engine-capacity-vcs:\t2\n"))

# msm: no pdev (a platform device); drm_show_memory_stats with region "memory"
MSM = drm_fdinfo(800, (
    "drm-driver:\tmsm\n"
    "drm-client-id:\t5\n"
    "drm-engine-gpu:\t12345 ns\n"
    "drm-cycles-gpu:\t6789\n"
    "drm-maxfreq-gpu:\t900000000 Hz\n"
    "drm-total-memory:\t28672 KiB\n"
    "drm-shared-memory:\t0\n"
    "drm-active-memory:\t4096 KiB\n"
    "drm-resident-memory:\t28672 KiB\n"
    "drm-purgeable-memory:\t0\n"))

# panfrost, as in Documentation/gpu/panfrost.rst (units on zero values too)
PANFROST = drm_fdinfo(801, (
    "drm-driver:\tpanfrost\n"
    "drm-client-id:\t12\n"
    "drm-engine-fragment:\t1846584880 ns\n"
    "drm-cycles-fragment:\t1424359409\n"
    "drm-maxfreq-fragment:\t799999987 Hz\n"
    "drm-curfreq-fragment:\t799999987 Hz\n"
    "drm-engine-vertex-tiler:\t71932239 ns\n"
    "drm-cycles-vertex-tiler:\t52617357\n"
    "drm-maxfreq-vertex-tiler:\t799999987 Hz\n"
    "drm-curfreq-vertex-tiler:\t799999987 Hz\n"
    "drm-total-memory:\t290 MiB\n"
    "drm-shared-memory:\t0 MiB\n"
    "drm-active-memory:\t0 MiB\n"
    "drm-resident-memory:\t38 MiB\n"
    "drm-purgeable-memory:\t0 MiB\n"))

ENGINE_ONLY = drm_fdinfo(900, (
    "drm-driver:\tv3d\n"
    "drm-client-id:\t3\n"
    "drm-engine-bin:\t1234 ns\n"
    "drm-engine-render:\t5678 ns\n"))


# -- the parser ---------------------------------------------------------------------------


def gpu_tree():
    t = kfixture.Tree()
    # one amdgpu client shared by three processes: inherited, dup'd (two fds in 200), passed
    # and a dma-buf, so that GEM is seen not to mix with buffer totals
    t.proc(200, "compositor").fd(5, "/dev/dri/renderD128", AMDGPU).fd(9, "/dev/dri/renderD128", AMDGPU) \
        .dmabuf(11, ino=40, size=MiB, exporter="amdgpu")
    t.proc(201, "child").fd(5, "/dev/dri/renderD128", AMDGPU) \
        .fd(8, "/dev/dri/renderD128", AMDGPU_LEGACY)        # and a client of its own
    t.proc(202, "receiver").fd(7, "/dev/dri/renderD128", AMDGPU)
    t.proc(300, "game").fd(4, "/dev/dri/card1", I915)
    t.proc(301, "xeapp").fd(4, "/dev/dri/renderD129", XE)
    t.proc(400, "phone-ui").fd(6, "/dev/dri/renderD128", MSM)
    t.proc(401, "mali-app").fd(6, "/dev/dri/card0", PANFROST)
    t.proc(402, "compute").fd(3, "/dev/dri/renderD130", ENGINE_ONLY)
    # same client-id 30 on another GPU: another client
    t.proc(500, "other-gpu").fd(3, "/dev/dri/renderD131", AMDGPU.replace("0000:04:00.0", "0000:05:00.0"))
    t.bufinfo([{"size": MiB, "exporter": "amdgpu", "ino": 40}])
    return t
