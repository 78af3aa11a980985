"""Evaluation that measures whether each stage learns, on any model directory and any control vocabulary.

- An inverse-dynamics model (IDM, ``idm``) learns on real footage, passed through the model's VAE, which
  control token each latent frame's motion shows; its accuracy on held-out footage (per class, with chance
  beside it) is the ceiling that generated video is held to (``footage``).
- Control following: clips (stages 1 and 2) and long streams (stages 3 and 4) are generated under random
  commands (``generation``, the one module that calls the stages' pipelines) and the IDM's agreement with
  the commands is measured, beside chance and the ceiling at the same mix of commands.
- Domain fit: total variation distance between the colour histograms of generated and held-out real frames,
  and the Frechet distance between their IDM features (``metrics``).
- Drift: the same per 100-frame bin of 2,000+ streamed frames, beside the spread of real footage's bins.
- Speed: a stream's frames per second and time to its first frame, beside its quality.

``python -m thematrix.evaluation {idm,clips,stream}`` runs them (``__main__``); each writes its measures as
JSON with the settings, device and date beside them, and a contact sheet of frames (``report``).
"""
