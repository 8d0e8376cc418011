"""Datasets: the DigitScenes generator and the PASCAL VOC-layout reader (no torch; cv2 imported lazily).

``digitscenes``: ``generate_digitscenes`` writes a VOC-layout folder of handwritten-digit scenes;
``write_split_video`` renders a split as an mp4 for the camera demo. ``scene_render`` draws one scene.
``voc``: ``VocDataset`` reads DigitScenes or a real VOCdevkit/VOC2012 folder, plus the augmentations.
``commands``: the ``mess-edge data`` click group.
"""
