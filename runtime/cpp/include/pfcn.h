/* pfcn.h: run a pfcn end-to-end AOTInductor package (.pt2) from C.
 *
 * The package holds the whole pipeline (resize, network, kernel fusion, mask heads, panoptic merge), so a caller
 * passes an RGB image and reads back the panoptic id map and its segments; there is no model-specific code to write.
 *
 *     pfcn_model* model = NULL;
 *     if (pfcn_open("model.pt2", "cpu", &model) != PFCN_OK) { fprintf(stderr, "%s\n", pfcn_last_error()); ... }
 *     pfcn_result* result = NULL;
 *     if (pfcn_run_rgb(model, rgb, height, width, &result) == PFCN_OK) {
 *         for (int i = 0; i < pfcn_result_num_segments(result); ++i) { pfcn_segment s; pfcn_result_segment(result, i, &s); }
 *         const int32_t* ids = pfcn_result_panoptic(result);   // height * width, row-major, 0 = void
 *         pfcn_free_result(result);
 *     }
 *     pfcn_free_model(model);
 *
 * Errors: every function that can fail returns a pfcn_status; the message of the last failure on the calling thread is
 * pfcn_last_error(). No function aborts or lets a C++ exception cross this boundary.
 * Threads: one model may be shared by threads (runs on one model are serialised); results are independent objects.
 */
#ifndef PFCN_H
#define PFCN_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define PFCN_API __declspec(dllexport)
#else
#define PFCN_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define PFCN_ABI_VERSION 1

typedef enum pfcn_status {
    PFCN_OK = 0,
    PFCN_ERROR_ARGUMENT = 1, /* a NULL pointer, a bad device string, an index out of range */
    PFCN_ERROR_FILE = 2,     /* the file does not exist or cannot be read */
    PFCN_ERROR_ARTIFACT = 3, /* not a loadable AOTInductor package, or it carries no pfcn metadata */
    PFCN_ERROR_IMAGE = 4,    /* the image does not fit the graph (size outside its fixed or dynamic range) */
    PFCN_ERROR_RUNTIME = 5   /* the package failed while running (message from libtorch) */
} pfcn_status;

typedef struct pfcn_model pfcn_model;
typedef struct pfcn_result pfcn_result;

/* One panoptic segment, as in a COCO panoptic segments_info entry. */
typedef struct pfcn_segment {
    int32_t id;          /* value of its pixels in the id map */
    int32_t category_id; /* the dataset's category id */
    int32_t isthing;     /* 1 for a thing instance, 0 for a stuff region */
    float score;
    int64_t area;        /* pixels */
    int32_t bbox[4];     /* x, y, width, height; zeros for an empty segment */
} pfcn_segment;

/* One dataset category carried by the package. */
typedef struct pfcn_category {
    int32_t id;
    int32_t isthing;
    const char* name; /* owned by the model */
    uint8_t color[3];
} pfcn_category;

/* What images the graph takes: a fixed canvas (min == max) or a dynamic range, plus its batch (0 = dynamic). */
typedef struct pfcn_input_spec {
    int32_t min_height, min_width, max_height, max_width;
    int32_t fixed;  /* 1: every image is placed on a max_height x max_width canvas */
    int32_t batch;  /* fixed batch of the graph, 0 when dynamic */
} pfcn_input_spec;

/* The message of the last failure on this thread ("" if none). Valid until the next pfcn call on this thread. */
PFCN_API const char* pfcn_last_error(void);
/* A short name for a status ("PFCN_ERROR_IMAGE", ...). */
PFCN_API const char* pfcn_status_name(pfcn_status status);
PFCN_API int pfcn_abi_version(void);

/* Load an operator library into the process (e.g. torchvision's, for graphs with deformable convolutions).
 * Call it before pfcn_run_rgb; loading the same library twice is harmless. */
PFCN_API pfcn_status pfcn_load_op_library(const char* path);

/* Open a .pt2 package. device: "cpu", "cuda" or "cuda:N" (NULL means "cpu"); it must match the device the package
 * was compiled for. */
PFCN_API pfcn_status pfcn_open(const char* path, const char* device, pfcn_model** out);
PFCN_API void pfcn_free_model(pfcn_model* model);

/* A metadata value embedded by pfcn-export (keys: pfcn_version, graph, config, config_hash, categories, thresholds,
 * input_spec, output_names, ...); NULL if the key is absent. Owned by the model. */
PFCN_API const char* pfcn_model_metadata(const pfcn_model* model, const char* key);
PFCN_API pfcn_status pfcn_model_input_spec(const pfcn_model* model, pfcn_input_spec* out);
PFCN_API int pfcn_model_num_categories(const pfcn_model* model);
PFCN_API pfcn_status pfcn_model_category(const pfcn_model* model, int index, pfcn_category* out);

/* Run one image: rgb holds height * width * 3 bytes, row-major, RGB order, no row padding. */
PFCN_API pfcn_status pfcn_run_rgb(pfcn_model* model, const uint8_t* rgb, int height, int width, pfcn_result** out);
PFCN_API void pfcn_free_result(pfcn_result* result);

PFCN_API int pfcn_result_height(const pfcn_result* result);
PFCN_API int pfcn_result_width(const pfcn_result* result);
/* The panoptic id map: height * width int32, row-major, 0 = void; owned by the result. */
PFCN_API const int32_t* pfcn_result_panoptic(const pfcn_result* result);
/* The stuff head's label map (0 = things, 1.. = stuff classes): height * width uint8; owned by the result. */
PFCN_API const uint8_t* pfcn_result_semantic(const pfcn_result* result);
/* Segments, sorted by id. */
PFCN_API int pfcn_result_num_segments(const pfcn_result* result);
PFCN_API pfcn_status pfcn_result_segment(const pfcn_result* result, int index, pfcn_segment* out);

#ifdef __cplusplus
}
#endif

#endif /* PFCN_H */
