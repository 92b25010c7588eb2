"""P8: Stable Diffusion text-to-image, sampler studies, ControlNet and multi-ControlNet (ELEC4542 diffusion
topic (a)-(d)) through diffusers pipelines on weights loaded by `stable_diffusion`. Entry points: infer.py
(txt2img, study, controlnet, multi) and train.py (ControlNet fine-tuning); tiny.py builds stand-in weights."""
