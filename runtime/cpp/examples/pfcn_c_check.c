/* pfcn_c_check: the C ABI from plain C. Opens a package, prints its input spec and categories, runs one synthetic
 * HxW image and prints its segments. Every failure prints "STATUS_NAME: message" and exits with the status code,
 * which is how the tests drive the error paths (missing/corrupt package, image outside the graph's range).
 *
 *     pfcn_c_check MODEL.pt2 HEIGHT WIDTH [OP_LIBRARY]
 */
#include <stdio.h>
#include <stdlib.h>

#include "pfcn.h"

static int fail(pfcn_status status) {
    printf("%s: %s\n", pfcn_status_name(status), pfcn_last_error());
    return (int)status;
}

int main(int argc, char** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: pfcn_c_check MODEL.pt2 HEIGHT WIDTH [OP_LIBRARY]\n");
        return 64;
    }
    int height = atoi(argv[2]), width = atoi(argv[3]);
    pfcn_status status;
    if (argc > 4 && (status = pfcn_load_op_library(argv[4])) != PFCN_OK) return fail(status);
    pfcn_model* model = NULL;
    if ((status = pfcn_open(argv[1], "cpu", &model)) != PFCN_OK) return fail(status);
    pfcn_input_spec spec;
    pfcn_model_input_spec(model, &spec);
    printf("input: %s %dx%d..%dx%d batch %d\n", spec.fixed ? "fixed" : "dynamic", spec.min_height, spec.min_width,
           spec.max_height, spec.max_width, spec.batch);
    printf("categories: %d\n", pfcn_model_num_categories(model));
    printf("config_hash: %s\n", pfcn_model_metadata(model, "config_hash"));

    /* a smooth synthetic image; height/width may be anything the caller wants to test, even invalid */
    size_t n = height > 0 && width > 0 ? (size_t)height * (size_t)width * 3 : 3;
    unsigned char* rgb = (unsigned char*)malloc(n);
    for (size_t i = 0; i < n; ++i) rgb[i] = (unsigned char)((i / 3 * 7 + (i % 3) * 60) & 255);
    pfcn_result* result = NULL;
    status = pfcn_run_rgb(model, rgb, height, width, &result);
    free(rgb);
    if (status != PFCN_OK) {
        int code = fail(status);
        pfcn_free_model(model);
        return code;
    }
    printf("result: %dx%d, %d segments\n", pfcn_result_height(result), pfcn_result_width(result),
           pfcn_result_num_segments(result));
    for (int i = 0; i < pfcn_result_num_segments(result); ++i) {
        pfcn_segment s;
        pfcn_result_segment(result, i, &s);
        printf("  id %d category %d isthing %d score %.4f area %lld bbox %d %d %d %d\n", s.id, s.category_id,
               s.isthing, s.score, (long long)s.area, s.bbox[0], s.bbox[1], s.bbox[2], s.bbox[3]);
    }
    pfcn_segment dummy;
    status = pfcn_result_segment(result, -1, &dummy); /* an index out of range is an error, not a crash */
    printf("segment -1: %s\n", pfcn_status_name(status));
    pfcn_free_result(result);
    pfcn_free_model(model);
    return 0;
}
