"""The detectron2-style configuration of PanopticFCN: every key, its default, and a strict YAML loader.

Why a CfgNode: the official PanopticFCN configs (``configs/*.yaml`` of yanwei-li/PanopticFCN) are detectron2
YAML files, and users bring them along unchanged. So the defaults below are exactly what the official training
script sees: detectron2's ``config/defaults.py`` followed by ``panopticfcn/config.py:add_panopticfcn_config``.
Key names and values are those facts; the comments are ours. Only modules' builders read this config
(``pfcn.model.build_model``); ``nn.Module``s take plain arguments.

Naming convention kept from detectron2: a ``_TRAIN`` / ``_TEST`` suffix marks a key that only applies to training
or to inference. Sizes are in pixels of the network input unless stated otherwise.

Loading is stricter than detectron2 in what it reports (unknown keys come with the closest valid key, type
errors name key, value and expected type) but accepts the same files: ``_BASE_`` inheritance, strings that are
Python literals (``"(640, 672)"``, ``"1e-4"``) and ``KEY VALUE`` command-line overrides.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from yacs.config import CfgNode

__all__ = [
    "CONFIG_VERSION",
    "CfgNode",
    "ConfigError",
    "cfg_to_yaml",
    "config_hash",
    "get_cfg",
    "load_config",
    "merge_overrides",
]

CONFIG_VERSION = 2  # detectron2's current config schema; older (v1) files need detectron2's upgrader
BASE_KEY = "_BASE_"  # a YAML file may inherit from other files named under this top-level key
_HASH_CHARS = 16  # length of config_hash(): 64 bits of sha256 is plenty to tell configs apart


class ConfigError(ValueError, KeyError):
    """A config file or override the defaults cannot accept (unknown key, wrong type, bad syntax).

    Subclasses both ValueError and KeyError so callers written against yacs/detectron2 (which raise either)
    keep working.
    """

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------------------------------------------
# Defaults, part 1: detectron2 (detectron2/config/defaults.py), grouped as there.
# --------------------------------------------------------------------------------------------------------------
def _add_detectron2_defaults(C: CfgNode) -> None:
    """Declare detectron2's default keys (the base every official PanopticFCN config is merged into)."""
    C.VERSION = CONFIG_VERSION  # schema version of the file; detectron2 upgrades v1 files, pfcn only reads v2

    # Model-wide switches and input normalisation.
    C.MODEL = CfgNode()
    C.MODEL.LOAD_PROPOSALS = False  # read precomputed proposals from the dataset (Fast R-CNN only)
    C.MODEL.MASK_ON = False  # predict instance masks; the PanopticFCN configs set True
    C.MODEL.KEYPOINT_ON = False  # predict keypoints (Keypoint R-CNN only)
    C.MODEL.DEVICE = "cuda"  # torch device the official trainer builds on; pfcn tools take --device instead
    C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"  # detector family; the PanopticFCN configs say "PanopticFCN"
    C.MODEL.WEIGHTS = ""  # checkpoint to initialise from (path or detectron2:// URL); pfcn tools take --weights
    # Per-channel mean / std subtracted / divided from the image, in INPUT.FORMAT channel order (BGR by default).
    # std 1.0 because MSRA (caffe2) ResNets folded the std into conv1.
    C.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]
    C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]

    # Input pipeline: ResizeShortestEdge then optional flip / crop.
    C.INPUT = CfgNode()
    C.INPUT.MIN_SIZE_TRAIN = (800,)  # candidate shortest-edge sizes for training, px
    C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"  # "choice": pick one of MIN_SIZE_TRAIN; "range": uniform in [min, max]
    C.INPUT.MAX_SIZE_TRAIN = 1333  # cap on the longest edge after training resize, px
    C.INPUT.MIN_SIZE_TEST = 800  # shortest edge at test time, px; 0 disables the test resize
    C.INPUT.MAX_SIZE_TEST = 1333  # cap on the longest edge at test time, px
    C.INPUT.RANDOM_FLIP = "horizontal"  # training flip augmentation: "horizontal", "vertical" or "none"
    C.INPUT.CROP = CfgNode({"ENABLED": False})  # random crop augmentation during training
    C.INPUT.CROP.TYPE = "relative_range"  # how SIZE is read: "relative_range", "relative", "absolute", ...
    C.INPUT.CROP.SIZE = [0.9, 0.9]  # crop (h, w): fractions in (0, 1] for relative types, px for absolute
    C.INPUT.FORMAT = "BGR"  # channel order the model consumes (a PIL mode, or "BGR")
    C.INPUT.MASK_FORMAT = "polygon"  # ground-truth mask representation: "polygon" or "bitmask"

    # Dataset names (detectron2 DatasetCatalog names; pfcn maps the COCO panoptic ones).
    C.DATASETS = CfgNode()
    C.DATASETS.TRAIN = ()  # datasets concatenated for training
    C.DATASETS.PROPOSAL_FILES_TRAIN = ()  # precomputed proposal files, one per TRAIN dataset
    C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN = 2000  # proposals kept per image from those files
    C.DATASETS.TEST = ()  # datasets evaluated at test time
    C.DATASETS.PROPOSAL_FILES_TEST = ()  # precomputed proposal files, one per TEST dataset
    C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST = 1000  # proposals kept per image at test time

    # Data loading.
    C.DATALOADER = CfgNode()
    C.DATALOADER.NUM_WORKERS = 4  # loader worker processes
    C.DATALOADER.ASPECT_RATIO_GROUPING = True  # batch portrait and landscape images separately
    C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"  # or "RepeatFactorTrainingSampler" (LVIS-style resampling)
    C.DATALOADER.REPEAT_THRESHOLD = 0.0  # category frequency below which images are repeated (repeat sampler)
    C.DATALOADER.REPEAT_SQRT = True  # use the square root in the repeat factor (repeat sampler)
    C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True  # drop training images with no instance annotation

    # Backbone.
    C.MODEL.BACKBONE = CfgNode()
    C.MODEL.BACKBONE.NAME = "build_resnet_backbone"  # detectron2 builder name; PanopticFCN always builds R-FPN+P6P7
    C.MODEL.BACKBONE.FREEZE_AT = 2  # stages frozen from the input side: 1 = stem, 2 = stem + res2

    # Feature pyramid.
    C.MODEL.FPN = CfgNode()
    C.MODEL.FPN.IN_FEATURES = []  # backbone outputs fed to the FPN (contiguous power-of-2 strides)
    C.MODEL.FPN.OUT_CHANNELS = 256  # channels of every pyramid level
    C.MODEL.FPN.NORM = ""  # norm in lateral/output convs: "" (none) or "GN"
    C.MODEL.FPN.FUSE_TYPE = "sum"  # top-down + lateral fusion: "sum" or "avg"

    # Proposal generation (R-CNN families; unused by PanopticFCN, kept so detectron2 YAML loads).
    C.MODEL.PROPOSAL_GENERATOR = CfgNode()
    C.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"  # "RPN", "RRPN" or "PrecomputedProposals"
    C.MODEL.PROPOSAL_GENERATOR.MIN_SIZE = 0  # proposals with a side below this are dropped, px

    C.MODEL.ANCHOR_GENERATOR = CfgNode()
    C.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"  # anchor generator builder
    C.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]  # sqrt(area) per feature level, px
    C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]  # h/w ratios per feature level
    C.MODEL.ANCHOR_GENERATOR.ANGLES = [[-90, 0, 90]]  # rotated anchors' angles, degrees
    C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0  # first anchor centre offset, in units of the stride, [0, 1)

    C.MODEL.RPN = CfgNode()
    C.MODEL.RPN.HEAD_NAME = "StandardRPNHead"  # RPN head builder
    C.MODEL.RPN.IN_FEATURES = ["res4"]  # feature maps the RPN runs on
    C.MODEL.RPN.BOUNDARY_THRESH = -1  # drop anchors this far outside the image, px; -1 keeps all
    C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]  # [background, foreground] IoU cut points for anchor labels
    C.MODEL.RPN.IOU_LABELS = [0, -1, 1]  # labels for the three IoU intervals (neg, ignore, pos)
    C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256  # anchors sampled per image for the loss
    C.MODEL.RPN.POSITIVE_FRACTION = 0.5  # target share of positives among sampled anchors
    C.MODEL.RPN.BBOX_REG_LOSS_TYPE = "smooth_l1"  # "smooth_l1", "giou", "diou" or "ciou"
    C.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 1.0  # weight of the box regression loss
    C.MODEL.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)  # (dx, dy, dw, dh) target scaling
    C.MODEL.RPN.SMOOTH_L1_BETA = 0.0  # L1 -> L2 transition of smooth L1; 0 = pure L1
    C.MODEL.RPN.LOSS_WEIGHT = 1.0  # weight of all RPN losses
    C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 12000  # proposals kept per level before NMS, training
    C.MODEL.RPN.PRE_NMS_TOPK_TEST = 6000  # proposals kept per level before NMS, inference
    C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 2000  # proposals kept per image after NMS, training
    C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000  # proposals kept per image after NMS, inference
    C.MODEL.RPN.NMS_THRESH = 0.7  # IoU threshold of the proposal NMS
    C.MODEL.RPN.CONV_DIMS = [-1]  # hidden conv widths of the RPN head; -1 = same as the input

    # RoI heads (R-CNN families; unused by PanopticFCN).
    C.MODEL.ROI_HEADS = CfgNode()
    C.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"  # RoI heads builder
    C.MODEL.ROI_HEADS.NUM_CLASSES = 80  # foreground classes
    C.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]  # feature maps pooled by the RoI heads
    C.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]  # IoU that separates background from foreground RoIs
    C.MODEL.ROI_HEADS.IOU_LABELS = [0, 1]  # labels below / above that threshold
    C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512  # RoIs sampled per image for the loss
    C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25  # target share of foreground RoIs
    C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05  # minimum detection score at inference
    C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5  # per-class NMS IoU threshold at inference
    C.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = True  # add ground-truth boxes to the proposals when training

    C.MODEL.ROI_BOX_HEAD = CfgNode()
    C.MODEL.ROI_BOX_HEAD.NAME = ""  # box head builder ("" for C4 models)
    C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = "smooth_l1"  # "smooth_l1", "giou", "diou" or "ciou"
    C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT = 1.0  # weight of the box regression loss
    C.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # (dx, dy, dw, dh) target scaling
    C.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.0  # L1 -> L2 transition of smooth L1; 0 = pure L1
    C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14  # RoI pooling output side, cells
    C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0  # samples per cell; 0 = adaptive
    C.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"  # RoI pooling operator
    C.MODEL.ROI_BOX_HEAD.NUM_FC = 0  # fully connected layers in the box head
    C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024  # width of those layers
    C.MODEL.ROI_BOX_HEAD.NUM_CONV = 0  # conv layers in the box head
    C.MODEL.ROI_BOX_HEAD.CONV_DIM = 256  # channels of those convs
    C.MODEL.ROI_BOX_HEAD.NORM = ""  # norm of those convs: "", "GN" or "SyncBN"
    C.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False  # one box regressor shared by all classes
    C.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES = False  # train later heads on predicted instead of proposal boxes
    C.MODEL.ROI_BOX_HEAD.USE_FED_LOSS = False  # federated loss (LVIS)
    C.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE = False  # sigmoid cross-entropy (used with the federated loss)
    C.MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER = 0.5  # exponent on image counts for class weights
    C.MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES = 50  # classes sampled per iteration by the federated loss

    C.MODEL.ROI_BOX_CASCADE_HEAD = CfgNode()
    # One entry per cascade stage: box target scaling and the IoU that stage trains on.
    C.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = (
        (10.0, 10.0, 5.0, 5.0),
        (20.0, 20.0, 10.0, 10.0),
        (30.0, 30.0, 15.0, 15.0),
    )
    C.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = (0.5, 0.6, 0.7)

    C.MODEL.ROI_MASK_HEAD = CfgNode()
    C.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"  # mask head builder
    C.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14  # RoI pooling output side, cells
    C.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 0  # samples per cell; 0 = adaptive
    C.MODEL.ROI_MASK_HEAD.NUM_CONV = 0  # conv layers in the mask head
    C.MODEL.ROI_MASK_HEAD.CONV_DIM = 256  # channels of those convs
    C.MODEL.ROI_MASK_HEAD.NORM = ""  # norm of those convs: "", "GN" or "SyncBN"
    C.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = False  # one mask shared by all classes
    C.MODEL.ROI_MASK_HEAD.POOLER_TYPE = "ROIAlignV2"  # RoI pooling operator

    C.MODEL.ROI_KEYPOINT_HEAD = CfgNode()
    C.MODEL.ROI_KEYPOINT_HEAD.NAME = "KRCNNConvDeconvUpsampleHead"  # keypoint head builder
    C.MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION = 14  # RoI pooling output side, cells
    C.MODEL.ROI_KEYPOINT_HEAD.POOLER_SAMPLING_RATIO = 0  # samples per cell; 0 = adaptive
    C.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = (512,) * 8  # widths of the head's conv layers
    C.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = 17  # keypoints per instance (COCO person)
    C.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE = 1  # training images with fewer visible keypoints are dropped
    C.MODEL.ROI_KEYPOINT_HEAD.NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS = True  # loss / visible keypoints in the batch
    C.MODEL.ROI_KEYPOINT_HEAD.LOSS_WEIGHT = 1.0  # weight of the keypoint loss
    C.MODEL.ROI_KEYPOINT_HEAD.POOLER_TYPE = "ROIAlignV2"  # RoI pooling operator

    # Semantic segmentation head. detectron2 declares NAME, IN_FEATURES, CONVS_DIM, COMMON_STRIDE, NORM and
    # LOSS_WEIGHT here as well, but add_panopticfcn_config replaces the whole node with one holding only the two
    # keys below (its semantic FPN lives in MODEL.SEMANTIC_FPN), so those keys do not exist in the official config.
    C.MODEL.SEM_SEG_HEAD = CfgNode()
    C.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 54  # semantic classes scored by the evaluator: 53 stuff + 1 "thing"
    C.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255  # label ignored by the semantic evaluator

    # Panoptic FPN (unused by PanopticFCN).
    C.MODEL.PANOPTIC_FPN = CfgNode()
    C.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT = 1.0  # scale of all instance-branch losses
    C.MODEL.PANOPTIC_FPN.COMBINE = CfgNode({"ENABLED": True})  # ENABLED is deprecated and ignored by detectron2
    C.MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH = 0.5  # max overlap of an instance with earlier ones
    C.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 4096  # min stuff segment area, px
    C.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = 0.5  # min instance score to be merged

    # RetinaNet (unused by PanopticFCN; its P6/P7-from-P5 top block is what PanopticFCN borrows).
    C.MODEL.RETINANET = CfgNode()
    C.MODEL.RETINANET.NUM_CLASSES = 80  # foreground classes
    C.MODEL.RETINANET.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]  # pyramid levels the head runs on
    C.MODEL.RETINANET.NUM_CONVS = 4  # convs in each tower, excluding the output conv
    C.MODEL.RETINANET.IOU_THRESHOLDS = [0.4, 0.5]  # [background, foreground] IoU cut points
    C.MODEL.RETINANET.IOU_LABELS = [0, -1, 1]  # labels for the three IoU intervals
    C.MODEL.RETINANET.PRIOR_PROB = 0.01  # initial foreground probability (sets the logits bias)
    C.MODEL.RETINANET.SCORE_THRESH_TEST = 0.05  # minimum score at inference
    C.MODEL.RETINANET.TOPK_CANDIDATES_TEST = 1000  # candidates per level kept before NMS
    C.MODEL.RETINANET.NMS_THRESH_TEST = 0.5  # NMS IoU threshold
    C.MODEL.RETINANET.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)  # (dx, dy, dw, dh) target scaling
    C.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 2.0  # focal loss focusing exponent
    C.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.25  # focal loss positive-class weight
    C.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA = 0.1  # L1 -> L2 transition of smooth L1
    C.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "smooth_l1"  # "smooth_l1", "giou", "diou" or "ciou"
    C.MODEL.RETINANET.NORM = ""  # norm in the towers: "" or "GN"

    # ResNet / ResNeXt body.
    C.MODEL.RESNETS = CfgNode()
    C.MODEL.RESNETS.DEPTH = 50  # 18, 34, 50, 101 or 152
    C.MODEL.RESNETS.OUT_FEATURES = ["res4"]  # stages returned; FPN models use res2..res5
    C.MODEL.RESNETS.NUM_GROUPS = 1  # 1 = ResNet, > 1 = ResNeXt cardinality
    C.MODEL.RESNETS.NORM = "FrozenBN"  # norm layer: "FrozenBN", "BN", "SyncBN" or "GN"
    C.MODEL.RESNETS.WIDTH_PER_GROUP = 64  # bottleneck width per group (scales all bottlenecks)
    C.MODEL.RESNETS.STRIDE_IN_1X1 = True  # stride 2 on the first 1x1 conv (MSRA); False = on the 3x3 (torchvision)
    C.MODEL.RESNETS.RES5_DILATION = 1  # dilation of res5 (1 or 2)
    C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256  # output channels of res2 (64 for R18/R34)
    C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64  # output channels of the stem
    C.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, False]  # deformable 3x3 in res2..res5
    C.MODEL.RESNETS.DEFORM_MODULATED = False  # modulated (v2) instead of v1 deformable conv
    C.MODEL.RESNETS.DEFORM_NUM_GROUPS = 1  # offset groups of those deformable convs

    # Solver.
    C.SOLVER = CfgNode()
    C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"  # schedule; PanopticFCN configs use "WarmupPolyLR"
    C.SOLVER.MAX_ITER = 40000  # training iterations
    C.SOLVER.BASE_LR = 0.001  # learning rate after warm-up
    C.SOLVER.BASE_LR_END = 0.0  # final learning rate of WarmupCosineLR
    C.SOLVER.MOMENTUM = 0.9  # SGD momentum
    C.SOLVER.NESTEROV = False  # Nesterov momentum
    C.SOLVER.WEIGHT_DECAY = 0.0001  # L2 weight decay
    C.SOLVER.WEIGHT_DECAY_NORM = 0.0  # weight decay of normalisation layers' affine parameters
    C.SOLVER.GAMMA = 0.1  # LR multiplier at each of STEPS (multi-step schedule)
    C.SOLVER.STEPS = (30000,)  # iterations at which the multi-step schedule decays
    C.SOLVER.NUM_DECAYS = 3  # decays of WarmupStepWithFixedGammaLR
    C.SOLVER.WARMUP_FACTOR = 1.0 / 1000  # LR multiplier at iteration 0 of the warm-up
    C.SOLVER.WARMUP_ITERS = 1000  # warm-up length, iterations
    C.SOLVER.WARMUP_METHOD = "linear"  # warm-up shape: "linear" or "constant"
    C.SOLVER.RESCALE_INTERVAL = False  # rescale the schedule to start after the warm-up
    C.SOLVER.CHECKPOINT_PERIOD = 5000  # save a checkpoint every this many iterations
    C.SOLVER.IMS_PER_BATCH = 16  # images per iteration across all devices
    C.SOLVER.REFERENCE_WORLD_SIZE = 0  # device count the config was tuned for; 0 disables auto-scaling
    C.SOLVER.BIAS_LR_FACTOR = 1.0  # LR multiplier for biases (Detectron v1 used 2)
    C.SOLVER.WEIGHT_DECAY_BIAS = None  # weight decay for biases; None = WEIGHT_DECAY
    C.SOLVER.CLIP_GRADIENTS = CfgNode({"ENABLED": False})  # gradient clipping before each step
    C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"  # "value": clamp each element; "norm": rescale per parameter
    C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0  # clamp bound (value) or max norm (norm)
    C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0  # p of the L-p norm for "norm" clipping (.inf for max)
    C.SOLVER.AMP = CfgNode({"ENABLED": False})  # automatic mixed precision in training

    # Evaluation.
    C.TEST = CfgNode()
    C.TEST.EXPECTED_RESULTS = []  # [[task, metric, value, tolerance], ...] checked after evaluation
    C.TEST.EVAL_PERIOD = 0  # evaluate every this many iterations during training; 0 = never
    C.TEST.KEYPOINT_OKS_SIGMAS = []  # per-keypoint OKS sigmas; empty = COCO's
    C.TEST.DETECTIONS_PER_IMAGE = 100  # max detections returned per image
    C.TEST.AUG = CfgNode({"ENABLED": False})  # test-time augmentation
    C.TEST.AUG.MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)  # shortest-edge sizes, px
    C.TEST.AUG.MAX_SIZE = 4000  # longest-edge cap for those, px
    C.TEST.AUG.FLIP = True  # also run flipped copies
    C.TEST.PRECISE_BN = CfgNode({"ENABLED": False})  # recompute BN statistics before evaluation
    C.TEST.PRECISE_BN.NUM_ITER = 200  # iterations used to recompute them

    # Miscellaneous.
    C.OUTPUT_DIR = "./output"  # where training writes checkpoints, logs and evaluation results
    C.SEED = -1  # random seed; negative = a fresh random seed per run
    C.CUDNN_BENCHMARK = False  # let cuDNN benchmark conv algorithms (helps with fixed input sizes)
    C.FLOAT32_PRECISION = ""  # torch float32 matmul precision: "", "highest", "high" or "medium"
    C.VIS_PERIOD = 0  # visualise training batches every this many iterations; 0 = never
    C.GLOBAL = CfgNode()
    C.GLOBAL.HACK = 1.0  # detectron2's scratch value for quick experiments


# --------------------------------------------------------------------------------------------------------------
# Defaults, part 2: PanopticFCN (panopticfcn/config.py:add_panopticfcn_config).
# --------------------------------------------------------------------------------------------------------------
def _add_panopticfcn_defaults(C: CfgNode) -> None:
    """Declare the keys PanopticFCN adds on top of detectron2 (SEM_SEG_HEAD is declared with detectron2's)."""
    C.MODEL.TENSOR_DIM = 100  # max ground-truth instances per image padded into the training target tensors
    C.MODEL.IGNORE_VALUE = 255  # stuff-target label ignored by the losses (void and crowd pixels)
    C.SOLVER.POLY_LR_POWER = 0.9  # exponent of the poly decay: lr * (1 - iter / MAX_ITER) ** power
    C.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0  # after warm-up, floor of the poly factor (x BASE_LR); 0 = no floor

    # Semantic FPN (Panoptic FPN style): merges P2..P5 into one stride-4 map that feeds the feature encoder.
    C.MODEL.SEMANTIC_FPN = CfgNode()
    C.MODEL.SEMANTIC_FPN.IN_FEATURES = ["p2", "p3", "p4", "p5"]  # pyramid levels merged
    C.MODEL.SEMANTIC_FPN.CONVS_DIM = 256  # channels of its 3x3 convs
    C.MODEL.SEMANTIC_FPN.COMMON_STRIDE = 4  # output stride of the merged map (and of all masks)
    C.MODEL.SEMANTIC_FPN.NORM = "GN"  # norm after each conv

    # Position head: per pyramid level, object centers (things) and region maps (stuff).
    C.MODEL.POSITION_HEAD = CfgNode()
    C.MODEL.POSITION_HEAD.NUM_CONVS = 3  # shared conv tower depth
    C.MODEL.POSITION_HEAD.COORD = False  # append coordinate channels to the input
    C.MODEL.POSITION_HEAD.CONVS_DIM = 256  # tower channels
    C.MODEL.POSITION_HEAD.NORM = "GN"  # norm after each tower conv
    C.MODEL.POSITION_HEAD.DEFORM = True  # modulated deformable 3x3 convs in the tower
    C.MODEL.POSITION_HEAD.THING = CfgNode()
    C.MODEL.POSITION_HEAD.THING.CENTER_TYPE = "mass"  # training center: "mass" (mask centroid) or box center
    C.MODEL.POSITION_HEAD.THING.POS_NUM = 7  # top-scoring positions per object turned into weighted kernels
    C.MODEL.POSITION_HEAD.THING.NUM_CLASSES = 80  # thing classes (center heatmap channels)
    C.MODEL.POSITION_HEAD.THING.BIAS_VALUE = -2.19  # initial bias of the center logits (prior ~0.1)
    C.MODEL.POSITION_HEAD.THING.MIN_OVERLAP = 0.7  # IoU the gaussian radius must preserve (CenterNet rule)
    C.MODEL.POSITION_HEAD.THING.GAUSSIAN_SIGMA = 3  # gaussian sigma = diameter / this
    C.MODEL.POSITION_HEAD.THING.THRES = 0.05  # min center score kept at inference (FAST configs: 0.2)
    C.MODEL.POSITION_HEAD.THING.TOP_NUM = 100  # thing candidates per image; TOP_NUM / 2 per level
    C.MODEL.POSITION_HEAD.STUFF = CfgNode()
    C.MODEL.POSITION_HEAD.STUFF.NUM_CLASSES = 54  # region channels: 53 stuff + 1 "all things"
    C.MODEL.POSITION_HEAD.STUFF.WITH_THING = True  # channel 0 stands for all things
    C.MODEL.POSITION_HEAD.STUFF.THRES = 0.05  # min mean region score kept at inference (FAST configs: 0.1)

    # Kernel head: per pyramid level, the 256-d kernel weights gathered at the positions found above.
    C.MODEL.KERNEL_HEAD = CfgNode()
    # Object scale range (px, sqrt of the box area) assigned to each level P3..P7 for training targets;
    # neighbouring ranges overlap, so an object may train several levels.
    C.MODEL.KERNEL_HEAD.INSTANCE_SCALES = ((1, 64), (32, 128), (64, 256), (128, 512), (256, 2048))
    C.MODEL.KERNEL_HEAD.TEST_SCALES = ((1, 64), (64, 128), (128, 256), (256, 512), (512, 2048))  # declared, unused
    C.MODEL.KERNEL_HEAD.NUM_CONVS = 3  # tower depth
    C.MODEL.KERNEL_HEAD.DEFORM = False  # deformable tower convs
    C.MODEL.KERNEL_HEAD.COORD = True  # append coordinate channels to the input
    C.MODEL.KERNEL_HEAD.CONVS_DIM = 256  # tower and kernel channels
    C.MODEL.KERNEL_HEAD.NORM = "GN"  # norm after each tower conv

    # Feature encoder: the high-resolution "encoded feature" that the generated kernels are applied to.
    C.MODEL.FEATURE_ENCODER = CfgNode()
    C.MODEL.FEATURE_ENCODER.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]  # levels the heads run on
    C.MODEL.FEATURE_ENCODER.NUM_CONVS = 3  # conv depth
    C.MODEL.FEATURE_ENCODER.CONVS_DIM = 64  # encoded feature channels (Star configs: 256)
    C.MODEL.FEATURE_ENCODER.DEFORM = False  # deformable convs (Star configs: True)
    C.MODEL.FEATURE_ENCODER.COORD = True  # append coordinate channels to the input
    C.MODEL.FEATURE_ENCODER.NORM = ""  # norm after each conv ("" = none)

    # Loss weights.
    C.MODEL.LOSS_WEIGHT = CfgNode()
    C.MODEL.LOSS_WEIGHT.POSITION = 1.0  # weight of the focal loss on centers and regions
    C.MODEL.LOSS_WEIGHT.SEGMENT = 3.0  # weight of the dice loss on masks
    C.MODEL.LOSS_WEIGHT.FOCAL_LOSS_ALPHA = 0.25  # focal loss positive-class weight
    C.MODEL.LOSS_WEIGHT.FOCAL_LOSS_GAMMA = 2.0  # focal loss focusing exponent

    # Inference.
    C.MODEL.INFERENCE = CfgNode()
    C.MODEL.INFERENCE.INST_THRES = 0.4  # mask probability above which a pixel belongs to a thing
    C.MODEL.INFERENCE.SIMILAR_THRES = 0.9  # kernel similarity above which thing kernels are fused
    C.MODEL.INFERENCE.SIMILAR_TYPE = "cosine"  # similarity used for kernel fusion
    C.MODEL.INFERENCE.CLASS_SPECIFIC = True  # fuse only kernels of the same class
    C.MODEL.INFERENCE.COMBINE = CfgNode()
    C.MODEL.INFERENCE.COMBINE.ENABLE = True  # produce the panoptic merge
    C.MODEL.INFERENCE.COMBINE.NO_OVERLAP = False  # declared, unused
    C.MODEL.INFERENCE.COMBINE.OVERLAP_THRESH = 0.5  # skip a thing whose mask is more than this already taken
    C.MODEL.INFERENCE.COMBINE.STUFF_AREA_LIMIT = 4096  # min free area for a stuff segment, px (original size)
    C.MODEL.INFERENCE.COMBINE.INST_THRESH = 0.2  # min thing score to enter the panoptic merge


def _build_defaults() -> CfgNode:
    cfg = CfgNode()
    _add_detectron2_defaults(cfg)
    _add_panopticfcn_defaults(cfg)
    cfg.freeze()
    return cfg


_DEFAULTS = _build_defaults()


def get_cfg() -> CfgNode:
    """Return a fresh, mutable copy of the official defaults (detectron2 + PanopticFCN keys).

    The defaults alone do not describe an R50 PanopticFCN model (e.g. FPN.IN_FEATURES is empty, as in
    detectron2); load one of ``configs/*.yaml`` with :func:`load_config` for that.
    """
    cfg = _DEFAULTS.clone()
    cfg.defrost()
    return cfg


# --------------------------------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------------------------------
def _iter_keys(node: CfgNode, prefix: str = "") -> Iterator[str]:
    """Every dotted key of a config, groups included (``MODEL``, ``MODEL.FPN``, ``MODEL.FPN.NORM`` ...)."""
    for key, value in node.items():
        yield prefix + key
        if isinstance(value, CfgNode):
            yield from _iter_keys(value, prefix + key + ".")


def _unknown_key_error(full_key: str, source: str) -> ConfigError:
    """Build the error for a key that is not declared, with the nearest declared keys as a hint."""
    candidates = list(_iter_keys(_DEFAULTS))
    close = difflib.get_close_matches(full_key, candidates, n=3, cutoff=0.6)
    if not close:  # e.g. the leaf name given without its group: match on the last component only
        leaf = full_key.rsplit(".", 1)[-1]
        by_leaf: dict[str, list[str]] = {}
        for cand in candidates:
            by_leaf.setdefault(cand.rsplit(".", 1)[-1], []).append(cand)
        for name in difflib.get_close_matches(leaf, list(by_leaf), n=3, cutoff=0.75):
            close.extend(by_leaf[name])
        close = close[:3]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "; no similar key exists"
    return ConfigError(f"{source}: unknown config key {full_key!r}{hint}")


def _decode(raw: Any) -> Any:
    """Turn a string that spells a Python literal into that literal, as yacs/detectron2 do.

    This is how detectron2 YAML writes tuples (``MIN_SIZE_TRAIN: (640, 672)``) and how ``1e-4`` (a string to
    YAML 1.1) becomes a float. Strings that are not literals (``BGR``, paths) stay strings.
    """
    if not isinstance(raw, str):
        return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return raw


def _kind(value: Any) -> str:
    """Coarse element category used to check the items of list/tuple keys."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "sequence"
    if value is None:
        return "None"
    return type(value).__name__


def _conform_sequence(full_key: str, value: Sequence[Any], default: Sequence[Any], source: str) -> Any:
    """Give ``value`` the container type of ``default``, recursively, and check its items' categories.

    The default's first item is the template for all items when the default is non-empty and uniform, which
    keeps ``KERNEL_HEAD.INSTANCE_SCALES`` a tuple of tuples whether the YAML wrote lists or tuples. Items are
    only checked by category (number / str / bool / sequence), like detectron2 keeps ints where floats are
    the default (``ANCHOR_GENERATOR.ANGLES``).
    """
    kinds = {_kind(item) for item in default}
    if len(kinds) != 1:  # empty or mixed default: nothing to check the items against
        return type(default)(value)
    template = default[0]
    items = []
    for index, item in enumerate(value):
        if _kind(item) != _kind(template):
            raise ConfigError(
                f"{source}: {full_key}[{index}] must be of kind {_kind(template)} like the default {default!r}; "
                f"got {item!r} ({type(item).__name__})"
            )
        if isinstance(item, (list, tuple)):
            item = _conform_sequence(f"{full_key}[{index}]", item, template, source)
        items.append(item)
    return type(default)(items)


def _coerce(full_key: str, raw: Any, default: Any, source: str) -> Any:
    """Check a new value against the default's type, as yacs does, with clearer errors.

    Accepted: the same type; None on either side (yacs rule); list <-> tuple; an int for a float key (widened).
    A quoted string for a string key is kept verbatim even if it looks like a number (``OUTPUT_DIR: "2024"``).
    """
    value = _decode(raw)
    if isinstance(default, str) and isinstance(raw, str) and not isinstance(value, str):
        value = raw
    if default is None or value is None:
        return value
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return _conform_sequence(full_key, value, default, source)
    if type(value) is type(default):
        return value
    if type(default) is float and type(value) is int:
        return float(value)
    raise ConfigError(
        f"{source}: {full_key} expects type {type(default).__name__} (currently {default!r}); "
        f"got {raw!r} ({type(value).__name__})"
    )


def _merge_mapping(cfg: CfgNode, data: Mapping[str, Any], prefix: str, source: str) -> None:
    """Merge a plain nested mapping (parsed YAML) into ``cfg``, rejecting keys the defaults do not declare."""
    for key, raw in data.items():
        full_key = f"{prefix}{key}"
        if not isinstance(key, str) or key not in cfg:
            raise _unknown_key_error(str(full_key), source)
        current = cfg[key]
        if isinstance(current, CfgNode):
            if not isinstance(raw, Mapping):
                raise ConfigError(
                    f"{source}: {full_key} is a group of keys ({', '.join(sorted(current))}); "
                    f"expected a mapping, got {raw!r}"
                )
            _merge_mapping(current, raw, full_key + ".", source)
        else:
            if isinstance(raw, Mapping):
                raise ConfigError(f"{source}: {full_key} is a single value (currently {current!r}); got a mapping")
            cfg[key] = _coerce(full_key, raw, current, source)


def _read_yaml(path: Path) -> dict[str, Any]:
    """Parse one YAML file into a mapping (empty file -> {})."""
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with path.open("r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys, got {type(data).__name__}")
    return data


def _merge_dicts(child: Mapping[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Overlay ``child`` on ``base`` (nested mappings merged key by key, anything else replaced)."""
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge_dicts(value, base[key])
        else:
            base[key] = value
    return base


def _load_yaml_with_base(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML file and resolve its ``_BASE_`` chain (fvcore semantics) into one plain mapping.

    ``_BASE_`` is a path or a list of paths, relative to the including file's folder unless absolute or
    starting with ``~``; bases are applied in order, then the file itself on top.
    """
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"{path}: {BASE_KEY} files include each other: {cycle}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: {BASE_KEY} must be a path or a list of paths, got {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:
        if base.startswith(("http://", "https://")):
            raise ConfigError(f"{path}: {BASE_KEY} {base!r}: URLs are not supported, download the file first")
        base_path = Path(os.path.expanduser(base))
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        if not base_path.is_file():
            raise FileNotFoundError(f"{path}: {BASE_KEY} file not found: {base_path}")
        _merge_dicts(_load_yaml_with_base(base_path, (*chain, resolved)), merged)
    return _merge_dicts(data, merged)


def _check_version(cfg: CfgNode, source: str) -> None:
    if cfg.VERSION != CONFIG_VERSION:
        raise ConfigError(
            f"{source}: VERSION {cfg.VERSION!r} is not supported; pfcn reads detectron2 VERSION "
            f"{CONFIG_VERSION} configs (upgrade older files with detectron2's config upgrader)"
        )


def merge_overrides(cfg: CfgNode, overrides: Sequence[Any]) -> CfgNode:
    """Apply detectron2-style ``KEY VALUE`` pairs (e.g. from the command line) to a mutable config in place.

    Values are strings read as Python literals when they are one (``0.2``, ``"(512,)"``, ``True``), else kept as
    strings; non-string values (from Python callers) are used as they are.

    Returns:
        ``cfg``, for chaining.
    """
    if cfg.is_frozen():
        raise ConfigError("cannot apply overrides to a frozen config; call cfg.clone() and cfg.defrost() first")
    tokens = list(overrides)
    if len(tokens) % 2:
        raise ConfigError(
            f"overrides must be KEY VALUE pairs; got {len(tokens)} tokens and the last key {tokens[-1]!r} "
            f"has no value: {' '.join(map(str, tokens))}"
        )
    for full_key, raw in zip(tokens[0::2], tokens[1::2]):
        if not isinstance(full_key, str) or not full_key:
            raise ConfigError(f"overrides: a key must be a dotted name like MODEL.WEIGHTS, got {full_key!r}")
        node = cfg
        parts = full_key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if not isinstance(child, CfgNode):
                if child is None:
                    raise _unknown_key_error(full_key, "overrides")
                raise ConfigError(f"overrides: {'.'.join(parts[: depth + 1])} is a single value, not a group")
            node = child
        leaf = parts[-1]
        if leaf not in node:
            raise _unknown_key_error(full_key, "overrides")
        if isinstance(node[leaf], CfgNode):
            raise ConfigError(
                f"overrides: {full_key} is a group of keys ({', '.join(sorted(node[leaf]))}); "
                "override its keys one by one"
            )
        node[leaf] = _coerce(full_key, raw, node[leaf], "overrides")
    _check_version(cfg, "overrides")
    return cfg


def load_config(
    path: str | os.PathLike[str], overrides: Sequence[Any] | None = None, freeze: bool = True
) -> CfgNode:
    """Build a config: the defaults, then a YAML file (with its ``_BASE_`` chain), then ``KEY VALUE`` overrides.

    Args:
        path: a detectron2-style YAML file, e.g. ``configs/PanopticFCN-R50-3x.yaml`` or an official one.
        overrides: flat list ``[KEY, VALUE, KEY, VALUE, ...]`` (dotted keys), applied after the file.
        freeze: return a frozen (read-only) config.

    Raises:
        FileNotFoundError: the file or one of its bases does not exist (message names the path).
        ConfigError: unknown key, type mismatch, odd override count or unreadable YAML.
    """
    path = Path(path)
    cfg = get_cfg()
    data = _load_yaml_with_base(path)
    _merge_mapping(cfg, data, "", str(path))
    _check_version(cfg, str(path))
    if overrides:
        merge_overrides(cfg, overrides)
    if freeze:
        cfg.freeze()
    return cfg


def config_from_yaml(text: str, overrides: Sequence[Any] | None = None, source: str = "embedded config",
                     freeze: bool = True) -> CfgNode:
    """Build a config from YAML text (the ``cfg`` a pfcn checkpoint or artifact carries), then overrides."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: the stored config is not valid YAML ({e})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the stored config is not a mapping of keys")
    cfg = get_cfg()
    _merge_mapping(cfg, data, "", source)
    _check_version(cfg, source)
    if overrides:
        merge_overrides(cfg, overrides)
    if freeze:
        cfg.freeze()
    return cfg


# --------------------------------------------------------------------------------------------------------------
# Serialisation (artifact metadata).
# --------------------------------------------------------------------------------------------------------------
class _PlainDumper(yaml.SafeDumper):
    """Safe dumper that never writes YAML anchors, so equal configs always dump to identical text."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_flow_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    """Lists on one line (``[640, 672]``), mappings as blocks: the layout of the config files themselves."""
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_PlainDumper.add_representer(list, _represent_flow_list)


def _to_plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def cfg_to_yaml(cfg: CfgNode) -> str:
    """Dump a config as YAML with sorted keys; tuples become lists (``load_config`` turns them back)."""
    return yaml.dump(_to_plain(cfg), Dumper=_PlainDumper, sort_keys=True, default_flow_style=False, width=120)


def config_hash(cfg: CfgNode) -> str:
    """Short, stable fingerprint of a config (first 16 hex digits of the sha256 of :func:`cfg_to_yaml`)."""
    return hashlib.sha256(cfg_to_yaml(cfg).encode("utf-8")).hexdigest()[:_HASH_CHARS]
