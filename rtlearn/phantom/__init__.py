"""The phantom clinic: seeded anatomies, a pencil-beam dose engine, inverse
planning with Pareto sweeps, and torch datasets built from them.

Embedded default data of the book: runs anywhere, no download::

    from rtlearn.phantom import make_patient, optimise_plan
    patient = make_patient("head_neck", seed=0, dims=2)
    plan = optimise_plan(patient)          # plan.dose in Gy, D95(PTV70) = 70 Gy

Also here: :mod:`~rtlearn.phantom.mr` (MR-like images of the brain phantom),
:mod:`~rtlearn.phantom.perturb` (imperfect target masks for DOSELO's dose
predictor) and :mod:`~rtlearn.phantom.surrogate` (a differentiable beam
surrogate of the dose engine). See the chapter "A phantom clinic" for the model
and its limits.
"""
from .anatomy import (DEFAULT_SHAPE, DEFAULT_SPACING, EXTRA_ROIS, PRESCRIPTIONS, ROI_NAMES, SITES, Patient,
                      hu_to_density, make_patient)
from .dose_engine import (BeamModel, arc_angles, breast_arc_angles, DoseEngine, central_axis_pdd, default_angles, lateral_profile,
                          penumbra_80_20, tangent_angle, water_phantom)
from .optimise import (OAR_WEIGHTS, PARETO_PAIRS, Plan, PlanObjective, falloff_profile, make_plan,
                       mimic_plan, normalise_plan, optimise_plan, pareto_sweep, plan_for_target, plan_summary)
from .datasets import PhantomDoseDataset, PhantomSegmentationDataset, case_seed, generate_cases
from .surrogate import BeamSurrogate

__all__ = [
    "SITES", "ROI_NAMES", "EXTRA_ROIS", "PRESCRIPTIONS", "DEFAULT_SHAPE", "DEFAULT_SPACING", "Patient", "make_patient",
    "hu_to_density", "BeamModel", "arc_angles", "breast_arc_angles", "tangent_angle", "DoseEngine", "default_angles", "central_axis_pdd", "lateral_profile",
    "penumbra_80_20", "water_phantom", "Plan", "PlanObjective", "OAR_WEIGHTS", "PARETO_PAIRS",
    "optimise_plan", "mimic_plan", "pareto_sweep", "plan_for_target", "normalise_plan", "falloff_profile",
    "plan_summary", "make_plan", "PhantomDoseDataset", "PhantomSegmentationDataset", "generate_cases",
    "case_seed", "BeamSurrogate",
]
