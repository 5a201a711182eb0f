"""nft.pointcloud: Neural mask Fine-Tuning for 3D point-cloud classifiers.

>>> from nft.pointcloud import Shapes, PointNet, PointBAI, PointMixup, PointCloudTask, DEFAULT_MASKS
>>> from nft.core import purify, PurifyConfig, select_clean_subset
>>> result = purify(model, select_clean_subset(pool, per_class=5), PurifyConfig(masks=DEFAULT_MASKS),
...                 task=PointCloudTask(), augmentation=PointMixup())

The ``modality`` object is what ``nft attack --modality pointcloud`` uses (entry point
``nft.modalities``).
"""

from .attacks import IRBA, PCBA, PointBAI, PointBAO, PointTrigger, rotation_matrix
from .augment import (
    POINT_MIXES,
    PointMix,
    PointMixup,
    PointWiseMixUp,
    RandomPointPatterns,
    RSMix,
    optimal_assignment,
)
from .data import (
    MODELNET10_CLASSES,
    SHAPE_CLASSES,
    ModelNetHDF5,
    ModelNetOFF,
    PointCloudDataset,
    Shapes,
    load_modelnet,
    normalize_cloud,
    read_off,
    sample_mesh,
)
from .metrics import evaluate_pointcloud, mean_class_accuracy, overall_accuracy
from .modality import DEFAULT_MASKS, PointCloudModality, PointCloudTask, build_model, make_trigger
from .models import DGCNN, PointNet, PointNet2
from .searches import ClusterAdversary, cluster_centres

modality = PointCloudModality()

__all__ = [
    "ClusterAdversary",
    "DEFAULT_MASKS",
    "DGCNN",
    "IRBA",
    "MODELNET10_CLASSES",
    "ModelNetHDF5",
    "ModelNetOFF",
    "PCBA",
    "POINT_MIXES",
    "PointMix",
    "PointBAI",
    "PointBAO",
    "PointCloudDataset",
    "PointCloudModality",
    "PointCloudTask",
    "PointMixup",
    "PointNet",
    "PointNet2",
    "PointTrigger",
    "PointWiseMixUp",
    "RSMix",
    "RandomPointPatterns",
    "SHAPE_CLASSES",
    "Shapes",
    "build_model",
    "cluster_centres",
    "evaluate_pointcloud",
    "load_modelnet",
    "make_trigger",
    "mean_class_accuracy",
    "modality",
    "normalize_cloud",
    "optimal_assignment",
    "overall_accuracy",
    "read_off",
    "rotation_matrix",
    "sample_mesh",
]
